//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed), then generates
//! prost messages, tonic services and pbjson serde impls (the protobuf JSON mapping pens may use).

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "../../proto";
const PROTOS: &[&str] = &["penwarden/device/v1/device.proto", "penwarden/api/v1/api.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTOS, [PROTO_ROOT])?;
    let descriptor_bytes = descriptors.encode_to_vec();
    std::fs::write(out_dir.join("penwarden_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;

    pbjson_build::Builder::new().register_descriptors(&descriptor_bytes)?.build(&[".penwarden"])?;
    Ok(())
}

//! Tenant boundaries for writes: every role's key tried against another tenant's records.
//! Each relation has an owner who alone may change it (crates/domain/src/ownership.rs).

use penwarden_proto::api::v1 as api;
use penwarden_tests::{Influxd, Mosquitto, Penwarden};
use tonic::Code;

use crate::common::GTIN;

struct Tenants {
    _mosquitto: Mosquitto,
    _influxd: Influxd,
    penwarden: Penwarden,
    chain_a: String,
    chain_b: String,
    maker: String,
    rival: String,
}

/// chain-a with clinic a1, chain-b with clinic b1, manufacturers `maker` and `rival`, and a key
/// for each.
async fn tenants() -> Tenants {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let env = [("PENWARDEN_INFLUX_URL", influxd.url()), ("PENWARDEN_INFLUX_API", "v1".into())];
    let penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let mut fleet = penwarden.fleet().await;
    for (chain, clinic) in [("chain-a", "a1"), ("chain-b", "b1")] {
        fleet.register_chain(api::RegisterChainRequest { chain_id: chain.into(), name: chain.into() }).await.unwrap();
        let request =
            api::RegisterClinicRequest { clinic_id: clinic.into(), chain_id: chain.into(), name: clinic.into() };
        fleet.register_clinic(request).await.unwrap();
    }
    Tenants {
        chain_a: penwarden.create_api_key("chain", "chain-a"),
        chain_b: penwarden.create_api_key("chain", "chain-b"),
        maker: penwarden.create_api_key("manufacturer", "maker"),
        rival: penwarden.create_api_key("manufacturer", "rival"),
        penwarden,
        _mosquitto: mosquitto,
        _influxd: influxd,
    }
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |status| status.code())
}

fn pen(serial: &str, clinic: &str, manufacturer: &str) -> api::RegisterPenRequest {
    api::RegisterPenRequest {
        pen_serial: serial.into(),
        clinic_id: clinic.into(),
        model: "SP-2".into(),
        manufacturer_id: manufacturer.into(),
    }
}

fn lot(gtin: &str, lot: &str, manufacturer: &str, public_key: Vec<u8>) -> api::RegisterLotRequest {
    api::RegisterLotRequest {
        gtin: gtin.into(),
        lot: lot.into(),
        expiry: "2030-12-31".into(),
        manufacturer_id: manufacturer.into(),
        public_key,
    }
}

fn valid_key() -> Vec<u8> {
    ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key().to_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_changes_another_tenants_pens_operators_or_gtins() {
    let t = tenants().await;
    let admin = t.penwarden.fleet().await;
    let (mut admin, mut chain_a, mut chain_b, mut maker, mut rival) = (
        admin,
        t.penwarden.fleet_as(&t.chain_a).await,
        t.penwarden.fleet_as(&t.chain_b).await,
        t.penwarden.fleet_as(&t.maker).await,
        t.penwarden.fleet_as(&t.rival).await,
    );

    // Pens. A manufacturer registers its pens unplaced; a chain places them in its clinics.
    assert_eq!(code(maker.register_pen(pen("MP-1", "", "")).await), Code::Ok);
    assert_eq!(code(maker.register_pen(pen("MP-2", "b1", "")).await), Code::PermissionDenied, "placed by a maker");
    assert_eq!(code(chain_b.register_pen(pen("MP-1", "b1", "")).await), Code::Ok);
    // The maker keeps its pen up to date where it is, but cannot take it out of b1.
    assert_eq!(code(maker.register_pen(pen("MP-1", "b1", "")).await), Code::Ok);
    assert_eq!(code(maker.register_pen(pen("MP-1", "", "")).await), Code::PermissionDenied, "unplaced by a maker");
    assert_eq!(code(rival.register_pen(pen("MP-1", "b1", "")).await), Code::PermissionDenied, "claimed by a rival");
    assert_eq!(code(chain_a.register_pen(pen("MP-1", "a1", "")).await), Code::PermissionDenied, "taken by chain-a");
    assert_eq!(code(chain_b.register_pen(pen("MP-1", "b1", "rival")).await), Code::PermissionDenied, "maker rewritten");
    // A chain's own pen, without a manufacturer: no manufacturer may claim it, nor a chain name one.
    assert_eq!(code(chain_b.register_pen(pen("CP-1", "b1", "rival")).await), Code::PermissionDenied);
    assert_eq!(code(chain_b.register_pen(pen("CP-1", "b1", "")).await), Code::Ok);
    assert_eq!(code(maker.register_pen(pen("CP-1", "b1", "")).await), Code::PermissionDenied, "an unowned pen claimed");
    let pens = admin.list_pens(api::ListPensRequest::default()).await.unwrap().into_inner().pens;
    let held = |serial: &str| {
        let pen = pens.iter().find(|p| p.pen_serial == serial).unwrap();
        (pen.clinic_id.clone(), pen.manufacturer_id.clone())
    };
    assert_eq!(held("MP-1"), ("b1".into(), "maker".into()));
    assert_eq!(held("CP-1"), ("b1".into(), String::new()));
    assert!(pens.iter().all(|p| p.pen_serial != "MP-2"));

    // Operators belong to the chain that registered them.
    let operator = |id: &str, licence_level| api::RegisterOperatorRequest { operator_id: id.into(), licence_level };
    assert_eq!(code(chain_a.register_operator(operator("op-a", 1)).await), Code::Ok);
    assert_eq!(code(chain_b.register_operator(operator("op-a", 3)).await), Code::PermissionDenied);
    assert_eq!(code(chain_a.register_operator(operator("op-a", 2)).await), Code::Ok);
    assert_eq!(code(admin.register_operator(operator("op-admin", 1)).await), Code::Ok);
    assert_eq!(code(chain_a.register_operator(operator("op-admin", 3)).await), Code::PermissionDenied);
    assert_eq!(code(maker.register_operator(operator("op-m", 3)).await), Code::PermissionDenied);

    // GTINs: assigned by an admin; only the holder registers lots under them.
    let assign = |prefix: &str, manufacturer: &str| api::AssignGtinRequest {
        prefix: prefix.into(),
        manufacturer_id: manufacturer.into(),
    };
    assert_eq!(code(rival.register_lot(lot(GTIN, "SQUAT", "rival", valid_key())).await), Code::PermissionDenied);
    assert_eq!(code(maker.register_lot(lot(GTIN, "L1", "maker", valid_key())).await), Code::PermissionDenied);
    assert_eq!(code(maker.assign_gtin(assign("9506000", "maker")).await), Code::PermissionDenied, "self-assigned");
    assert_eq!(code(admin.assign_gtin(assign("9506000", "maker")).await), Code::Ok);
    assert_eq!(code(maker.register_lot(lot(GTIN, "L1", "maker", valid_key())).await), Code::Ok);
    assert_eq!(code(rival.register_lot(lot(GTIN, "L1", "rival", valid_key())).await), Code::PermissionDenied);
    assert_eq!(code(rival.register_lot(lot(GTIN, "L2", "rival", valid_key())).await), Code::PermissionDenied);
    assert_eq!(code(admin.assign_gtin(assign("950600", "rival")).await), Code::FailedPrecondition, "overlapping");
    assert_eq!(code(admin.assign_gtin(assign(GTIN, "rival")).await), Code::FailedPrecondition, "inside a prefix");
    assert_eq!(code(admin.register_lot(lot(GTIN, "L3", "rival", valid_key())).await), Code::FailedPrecondition);
    assert_eq!(code(admin.assign_gtin(assign("95O6", "rival")).await), Code::InvalidArgument);
    // An unassigned GTIN registered by an admin is the lot's maker's from then on.
    let other_gtin = "07032069804988";
    assert_eq!(code(admin.register_lot(lot(other_gtin, "N1", "rival", valid_key())).await), Code::Ok);
    assert_eq!(code(maker.register_lot(lot(other_gtin, "N2", "maker", valid_key())).await), Code::PermissionDenied);
    assert_eq!(code(rival.register_lot(lot(other_gtin, "N2", "rival", valid_key())).await), Code::Ok);

    // A public key that is not an Ed25519 point.
    let mut not_a_point = vec![0u8; 32];
    not_a_point[0] = 2;
    assert_eq!(code(maker.register_lot(lot(GTIN, "L4", "maker", not_a_point)).await), Code::InvalidArgument);
}

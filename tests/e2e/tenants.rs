//! Tenant boundaries for writes: every role's key tried against another tenant's records.
//! Each relation has an owner who alone may change it (crates/domain/src/ownership.rs).

use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_tests::{wait_for, Influxd, Mosquitto, Penwarden, Publisher};
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

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A session on `pen` with `cartridge`, started at `start` and ended a second later.
async fn session(publisher: &mut Publisher, pen: &str, first_seq: u64, id: &str, cartridge: &str, start: i64) {
    use penwarden_proto::device::v1 as wire;
    use prost::Message;
    let started = wire::pen_event::Kind::SessionStarted(wire::SessionStarted {
        session_id: id.into(),
        cartridge_udi: cartridge.into(),
        cartridge_signature: crate::common::sign(cartridge),
        area: wire::TreatmentArea::Cheek as i32,
        depth_setting_mm: 1.0,
        ..Default::default()
    });
    let ended = wire::pen_event::Kind::SessionEnded(wire::SessionEnded { session_id: id.into(), ..Default::default() });
    for (seq, time, kind) in [(first_seq, start, started), (first_seq + 1, start + 1000, ended)] {
        let event =
            wire::PenEvent { schema_version: 1, pen_serial: pen.into(), seq, time_unix_ms: time, kind: Some(kind) };
        publisher.publish(&format!("pw/v1/pens/{pen}/events"), event.encode_to_vec()).await;
    }
}

async fn violations_as(penwarden: &Penwarden, token: &str, rule: &str) -> Vec<api::Violation> {
    let mut client = penwarden.compliance_as(token).await;
    let request = api::ListViolationsRequest { rule: rule.into(), ..Default::default() };
    client.list_violations(request).await.unwrap().into_inner().violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_name_another_tenants_sessions_or_lots() {
    let t = tenants().await;
    let mut admin = t.penwarden.fleet().await;
    crate::common::register_lot(&t.penwarden, "LOT9").await;
    for (serial, clinic) in [("PA", "a1"), ("PB", "b1"), ("PM", "a1")] {
        admin.register_pen(pen(serial, clinic, "")).await.unwrap();
    }
    let mut publisher = Publisher::connect(t._mosquitto.port).await;
    let t0 = now_ms() - 3_600_000;
    // One cartridge used by chain-a, then by chain-b: chain-b's session is the reuse.
    let cartridge = "(01)09506000134352(17)301231(10)LOT9(21)LEAK-1";
    session(&mut publisher, "PA", 1, "sa-secret", cartridge, t0).await;
    session(&mut publisher, "PB", 1, "sb", cartridge, t0 + 5000).await;
    // PM treats in chain-a, then moves to chain-b and treats again without a disinfection.
    session(&mut publisher, "PM", 1, "sm-secret", "(01)09506000134352(17)301231(10)LOT9(21)LEAK-2", t0).await;
    wait_for("both reuse and the moved pen's sessions", Duration::from_secs(30), || async {
        let reuse = violations_as(&t.penwarden, &t.penwarden.admin_token, "CARTRIDGE_REUSE").await;
        (reuse.len() == 1).then_some(())
    })
    .await;
    admin.register_pen(pen("PM", "b1", "")).await.unwrap();
    let mut chain_b_compliance = t.penwarden.compliance_as(&t.chain_b).await;
    let sterility = chain_b_compliance
        .get_pen_sterility(api::GetPenSterilityRequest { pen_serial: "PM".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!sterility.ready_to_treat);
    assert!(sterility.reasons.iter().all(|r| !r.contains("sm-secret")), "{:?}", sterility.reasons);
    assert!(sterility.reasons.iter().all(|r| r.contains("outside what this key may see")), "{:?}", sterility.reasons);
    let admin_view = t
        .penwarden
        .compliance()
        .await
        .get_pen_sterility(api::GetPenSterilityRequest { pen_serial: "PM".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(admin_view.reasons.iter().any(|r| r.contains("sm-secret")), "{:?}", admin_view.reasons);
    session(&mut publisher, "PM", 3, "sm2", "(01)09506000134352(17)301231(10)LOT9(21)LEAK-3", t0 + 60_000).await;
    let unwiped = wait_for("the moved pen's violation", Duration::from_secs(30), || async {
        let found = violations_as(&t.penwarden, &t.chain_b, "PEN_NOT_DISINFECTED").await;
        (!found.is_empty()).then_some(found)
    })
    .await;

    // chain-b reads its violations without chain-a's pen, session or timing.
    let reuse = violations_as(&t.penwarden, &t.chain_b, "CARTRIDGE_REUSE").await;
    assert_eq!(reuse.len(), 1);
    for violation in reuse.iter().chain(&unwiped) {
        for secret in ["PA", "sa-secret", "sm-secret", "5000 ms"] {
            assert!(!violation.explanation.contains(secret), "{secret} in {:?}", violation.explanation);
        }
        assert!(violation.explanation.contains("outside what this key may see"), "{}", violation.explanation);
    }
    // An admin, who may see both sessions, reads where and when.
    let full = violations_as(&t.penwarden, &t.penwarden.admin_token, "CARTRIDGE_REUSE").await;
    assert!(full[0].explanation.contains("sa-secret") && full[0].explanation.contains("PA"), "{}", full[0].explanation);

    // TraceLot: chain-b used the lot; a chain that never did, and another manufacturer, get
    // NOT_FOUND, exactly as for a lot that does not exist.
    let trace = |token: String| {
        let penwarden = &t.penwarden;
        async move {
            let request = api::TraceLotRequest { gtin: GTIN.into(), lot: "LOT9".into(), ..Default::default() };
            penwarden.compliance_as(&token).await.trace_lot(request).await.map(|r| r.into_inner())
        }
    };
    admin.register_chain(api::RegisterChainRequest { chain_id: "chain-c".into(), name: "C".into() }).await.unwrap();
    let chain_c = t.penwarden.create_api_key("chain", "chain-c");
    assert_eq!(code(trace(chain_c).await), Code::NotFound);
    assert_eq!(code(trace(t.rival.clone()).await), Code::NotFound);
    let seen_by_b = trace(t.chain_b.clone()).await.unwrap();
    // sb, and sm2 of the moved pen: chain-a's sessions of the lot are not counted.
    assert_eq!(seen_by_b.total_sessions, 2);
    assert!(seen_by_b.clinics.iter().all(|c| c.chain_id == "chain-b"));
}

//! FleetService: registration of chains, clinics and pens; the pen list.

use penwarden_domain::ids::OperatorId;
use penwarden_domain::{ChainId, ClinicId, PenSerial};
use penwarden_proto::api::v1 as pb;
use penwarden_proto::api::v1::fleet_service_server::FleetService;
use std::sync::Arc;

use penwarden_domain::access::{Role, Scope};
use penwarden_domain::compliance::{pen_service_due, Thresholds};
use penwarden_domain::ownership::{
    check_gtin_prefix, check_operator_registration, check_pen_registration, gtin_holder, GtinAssignment, PenHolders,
    Refused,
};
use penwarden_store::{LotRow, PenRow, Store};
use tonic::{Request, Response, Status};

use crate::audit::{audited, Auditor};
use crate::auth::{check_place_filters, require_admin, Authenticator};
use crate::now_ms;
use crate::status::{from_store, invalid_argument, optional, required};

/// Turns what a change to the record caused into time-series lines (wired by the binary, so
/// the API does not know the InfluxDB schema).
pub type DerivedLines = std::sync::Arc<dyn Fn(&penwarden_store::Effects) -> Vec<String> + Send + Sync>;

pub struct FleetApi {
    store: Store,
    derived_lines: DerivedLines,
    auth: Arc<Authenticator>,
    audit: Auditor,
}

impl FleetApi {
    pub(crate) fn new(store: Store, derived_lines: DerivedLines, auth: Arc<Authenticator>, audit: Auditor) -> Self {
        FleetApi { store, derived_lines, auth, audit }
    }
}

fn denied(what: &str, scope: &Scope) -> Status {
    Status::permission_denied(format!("{what} is outside this key's scope ({scope})"))
}

/// The manufacturer a manufacturer key acts for: its own, whatever the request says (an empty
/// field means "mine"; another manufacturer's id is refused).
fn acting_manufacturer(scope: &Scope, requested: &str) -> Result<String, Status> {
    match scope {
        Scope::Manufacturer(own) if requested.is_empty() || requested == own => Ok(own.clone()),
        Scope::Manufacturer(_) => Err(denied("manufacturer_id", scope)),
        _ => Ok(requested.to_owned()),
    }
}

fn valid_gtin(gtin: &str) -> Result<(), Status> {
    let digits = gtin.len() == 14 && gtin.bytes().all(|b| b.is_ascii_digit());
    if !digits || penwarden_domain::udi::gtin_check_digit(&gtin.as_bytes()[..13]) != gtin.as_bytes()[13] - b'0' {
        return Err(invalid_argument(format!("gtin {gtin:?} is not a GTIN-14 with a valid check digit")));
    }
    Ok(())
}

fn valid_date(date: &str) -> Result<(), Status> {
    let parts: Vec<&str> = date.split('-').collect();
    let ok = parts.len() == 3
        && [4, 2, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len && part.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(()).ok_or_else(|| invalid_argument(format!("expiry {date:?} must be YYYY-MM-DD")))
}

fn pen_message(row: PenRow, thresholds: &Thresholds) -> pb::Pen {
    let service_due = pen_service_due(row.motor_hours, Some(&row.firmware), thresholds).unwrap_or_default();
    pb::Pen {
        pen_serial: row.pen_serial,
        clinic_id: row.clinic_id.unwrap_or_default(),
        chain_id: row.chain_id.unwrap_or_default(),
        model: row.model,
        firmware: row.firmware,
        online: row.online,
        last_seen_unix_ms: row.last_seen_ms.unwrap_or_default(),
        battery_pct: row.battery_pct.unwrap_or_default(),
        motor_hours: row.motor_hours.unwrap_or_default(),
        manufacturer_id: row.manufacturer_id.unwrap_or_default(),
        last_seq: row.last_seq,
        service_due,
    }
}

#[tonic::async_trait]
impl FleetService for FleetApi {
    async fn register_chain(&self, request: Request<pb::RegisterChainRequest>) -> Result<Response<pb::Chain>, Status> {
        audited!(self, request, "FleetService/RegisterChain", |_| 1, |scope| {
            require_admin(&scope, "RegisterChain")?;
            let request = request.into_inner();
            let chain = required("chain_id", &request.chain_id, ChainId::parse)?;
            let row = self.store.register_chain(&chain, &request.name, now_ms()).await.map_err(from_store)?;
            Ok(Response::new(pb::Chain { chain_id: row.chain_id, name: row.name }))
        })
    }

    async fn register_clinic(
        &self,
        request: Request<pb::RegisterClinicRequest>,
    ) -> Result<Response<pb::Clinic>, Status> {
        audited!(self, request, "FleetService/RegisterClinic", |_| 1, |scope| {
            let request = request.into_inner();
            let clinic = required("clinic_id", &request.clinic_id, ClinicId::parse)?;
            let chain = required("chain_id", &request.chain_id, ChainId::parse)?;
            match &scope {
                Scope::All => {}
                Scope::Chain(own) if *own == chain => {
                    // A chain may not take over another chain's clinic by registering its id.
                    let current = self.store.clinic_chain(&clinic).await.map_err(from_store)?;
                    if current.is_some_and(|current| current != own.as_str()) {
                        return Err(denied("clinic_id", &scope));
                    }
                }
                _ => return Err(denied("chain_id", &scope)),
            }
            let row = self.store.register_clinic(&clinic, &chain, &request.name, now_ms()).await.map_err(from_store)?;
            Ok(Response::new(pb::Clinic { clinic_id: row.clinic_id, chain_id: row.chain_id, name: row.name }))
        })
    }

    async fn register_pen(&self, request: Request<pb::RegisterPenRequest>) -> Result<Response<pb::Pen>, Status> {
        audited!(self, request, "FleetService/RegisterPen", |_| 1, |scope| {
            let request = request.into_inner();
            let pen = required("pen_serial", &request.pen_serial, PenSerial::parse)?;
            let clinic = optional("clinic_id", &request.clinic_id, ClinicId::parse)?;
            let manufacturer = acting_manufacturer(&scope, &request.manufacturer_id)?;
            if scope != Scope::All {
                let existing = match self.store.pen(&pen).await {
                    Ok(existing) => Some(existing),
                    Err(penwarden_store::Error::NotFound(_)) => None,
                    Err(other) => return Err(from_store(other)),
                };
                let clinic_chain = match &clinic {
                    Some(clinic) => self.store.clinic_chain(clinic).await.map_err(from_store)?,
                    None => None,
                };
                let holders = existing.as_ref().map(|pen| PenHolders {
                    manufacturer: pen.manufacturer_id.as_deref(),
                    clinic: pen.clinic_id.as_deref(),
                    chain: pen.chain_id.as_deref(),
                });
                let requested = PenHolders {
                    manufacturer: (!manufacturer.is_empty()).then_some(manufacturer.as_str()),
                    clinic: clinic.as_ref().map(ClinicId::as_str),
                    chain: clinic_chain.as_deref(),
                };
                check_pen_registration(&scope, holders, requested).map_err(|Refused(what)| denied(what, &scope))?;
            }
            let row = self
                .store
                .register_pen(&pen, clinic.as_ref(), &request.model, &manufacturer, now_ms())
                .await
                .map_err(from_store)?;
            Ok(Response::new(pen_message(row, self.store.thresholds())))
        })
    }

    async fn list_pens(&self, request: Request<pb::ListPensRequest>) -> Result<Response<pb::ListPensResponse>, Status> {
        audited!(self, request, "FleetService/ListPens", |r: &pb::ListPensResponse| r.pens.len(), |scope| {
            let request = request.into_inner();
            let clinic = optional("clinic_id", &request.clinic_id, ClinicId::parse)?;
            let chain = optional("chain_id", &request.chain_id, ChainId::parse)?;
            check_place_filters(
                &self.store,
                &scope,
                chain.as_ref().map(|c| c.as_str()),
                clinic.as_ref().map(|c| c.as_str()),
            )
            .await?;
            let rows = self.store.list_pens(clinic.as_ref(), chain.as_ref(), &scope).await.map_err(from_store)?;
            Ok(Response::new(pb::ListPensResponse {
                pens: rows.into_iter().map(|row| pen_message(row, self.store.thresholds())).collect(),
            }))
        })
    }

    async fn register_lot(&self, request: Request<pb::RegisterLotRequest>) -> Result<Response<pb::Lot>, Status> {
        audited!(self, request, "FleetService/RegisterLot", |_| 1, |scope| {
            if !matches!(scope, Scope::All | Scope::Manufacturer(_)) {
                return Err(denied("RegisterLot", &scope));
            }
            let mut request = request.into_inner();
            request.manufacturer_id = acting_manufacturer(&scope, &request.manufacturer_id)?;
            valid_gtin(&request.gtin)?;
            valid_date(&request.expiry)?;
            if request.lot.is_empty() || request.lot.len() > 20 {
                return Err(invalid_argument("lot must be 1 to 20 characters"));
            }
            if request.manufacturer_id.is_empty() {
                return Err(invalid_argument("manufacturer_id is required"));
            }
            // A GTIN is its holder's: nobody else registers (or replaces the key of) a lot under it.
            // An admin registering a lot under an unassigned GTIN assigns it to the lot's maker.
            let assignments = self.store.gtin_assignments().await.map_err(from_store)?;
            match (gtin_holder(&request.gtin, &assignments), &scope) {
                (Some(holder), _) if holder == request.manufacturer_id => {}
                (Some(holder), Scope::All) => {
                    return Err(Status::failed_precondition(format!(
                        "GTIN {} is assigned to manufacturer {holder}, not {}",
                        request.gtin, request.manufacturer_id
                    )))
                }
                (None, Scope::All) => {
                    let assignment =
                        GtinAssignment { prefix: request.gtin.clone(), manufacturer: request.manufacturer_id.clone() };
                    self.store.assign_gtin(&assignment, now_ms()).await.map_err(from_store)?;
                }
                _ => {
                    return Err(Status::permission_denied(format!(
                    "GTIN {} is not assigned to manufacturer {}: an admin assigns GTINs and company prefixes (AssignGtin)",
                    request.gtin, request.manufacturer_id
                )))
                }
            }
            let lot = LotRow {
                gtin: request.gtin,
                lot: request.lot,
                expiry: request.expiry,
                manufacturer_id: request.manufacturer_id,
                public_key: request.public_key,
                recalled_ms: None,
            };
            let row = self.store.register_lot(&lot, now_ms()).await.map_err(from_store)?;
            Ok(Response::new(pb::Lot {
                gtin: row.gtin,
                lot: row.lot,
                expiry: row.expiry,
                manufacturer_id: row.manufacturer_id,
                public_key: row.public_key,
            }))
        })
    }

    async fn register_operator(
        &self,
        request: Request<pb::RegisterOperatorRequest>,
    ) -> Result<Response<pb::Operator>, Status> {
        audited!(self, request, "FleetService/RegisterOperator", |_| 1, |scope| {
            check_operator_registration(&scope, None).map_err(|Refused(what)| denied(what, &scope))?;
            let request = request.into_inner();
            let operator = required("operator_id", &request.operator_id, OperatorId::parse)?;
            let level =
                u8::try_from(request.licence_level).map_err(|_| invalid_argument("licence_level must be 1, 2 or 3"))?;
            let owner = self.store.operator_owner(&operator).await.map_err(from_store)?;
            check_operator_registration(&scope, owner.as_ref().map(Option::as_deref))
                .map_err(|Refused(what)| denied(what, &scope))?;
            let owning_chain = match &scope {
                Scope::Chain(own) => Some(own),
                _ => None,
            };
            self.store.register_operator(&operator, level, owning_chain, now_ms()).await.map_err(from_store)?;
            Ok(Response::new(pb::Operator { operator_id: operator.to_string(), licence_level: request.licence_level }))
        })
    }

    async fn assign_gtin(
        &self,
        request: Request<pb::AssignGtinRequest>,
    ) -> Result<Response<pb::GtinAssignment>, Status> {
        audited!(self, request, "FleetService/AssignGtin", |_| 1, |scope| {
            require_admin(&scope, "AssignGtin")?;
            let request = request.into_inner();
            check_gtin_prefix(&request.prefix).map_err(invalid_argument)?;
            let manufacturer = Scope::new(Role::Manufacturer, &request.manufacturer_id)
                .map_err(|e| invalid_argument(format!("manufacturer_id: {e}")))?;
            let assignment = GtinAssignment { prefix: request.prefix, manufacturer: manufacturer.id().to_owned() };
            let assignments = self.store.gtin_assignments().await.map_err(from_store)?;
            if let Some(other) =
                assignments.iter().find(|a| a.manufacturer != assignment.manufacturer && a.overlaps(&assignment))
            {
                return Err(Status::failed_precondition(format!(
                    "{} overlaps {}, assigned to manufacturer {}",
                    assignment.prefix, other.prefix, other.manufacturer
                )));
            }
            let makers = self.store.lot_manufacturers_under(&assignment.prefix).await.map_err(from_store)?;
            if let Some(other) = makers.iter().find(|maker| **maker != assignment.manufacturer) {
                return Err(Status::failed_precondition(format!(
                    "manufacturer {other} has lots registered under {}",
                    assignment.prefix
                )));
            }
            self.store.assign_gtin(&assignment, now_ms()).await.map_err(from_store)?;
            tracing::info!(prefix = %assignment.prefix, manufacturer = %assignment.manufacturer, "GTIN assigned");
            Ok(Response::new(pb::GtinAssignment {
                prefix: assignment.prefix,
                manufacturer_id: assignment.manufacturer,
            }))
        })
    }

    async fn recall_lot(
        &self,
        request: Request<pb::RecallLotRequest>,
    ) -> Result<Response<pb::RecallLotResponse>, Status> {
        audited!(
            self,
            request,
            "FleetService/RecallLot",
            |r: &pb::RecallLotResponse| r.violations_raised as usize,
            |scope| {
                let request = request.into_inner();
                valid_gtin(&request.gtin)?;
                match &scope {
                    Scope::All => {}
                    Scope::Manufacturer(own) => {
                        // Someone else's lot and no lot at all look the same.
                        let lot = self.store.lot(&request.gtin, &request.lot).await.map_err(from_store)?;
                        if lot.is_none_or(|lot| lot.manufacturer_id != *own) {
                            return Err(Status::not_found(format!(
                                "lot {} of GTIN {} not found",
                                request.lot, request.gtin
                            )));
                        }
                    }
                    _ => return Err(denied("RecallLot", &scope)),
                }
                let derived_lines = self.derived_lines.clone();
                let effects = self
                    .store
                    .recall_lot(&request.gtin, &request.lot, &request.reason, now_ms(), |effects| {
                        derived_lines(effects)
                    })
                    .await
                    .map_err(from_store)?;
                tracing::info!(gtin = %request.gtin, lot = %request.lot, sessions = effects.raised.len(), "lot recalled");
                Ok(Response::new(pb::RecallLotResponse { violations_raised: effects.raised.len() as u32 }))
            }
        )
    }
}

//! FleetService: registration of chains, clinics and pens; the pen list.

use penwarden_domain::{ChainId, ClinicId, PenSerial};
use penwarden_proto::api::v1 as pb;
use penwarden_proto::api::v1::fleet_service_server::FleetService;
use penwarden_store::{PenRow, Store};
use tonic::{Request, Response, Status};

use crate::status::{from_store, optional, required};

pub struct FleetApi {
    store: Store,
}

impl FleetApi {
    pub fn new(store: Store) -> Self {
        FleetApi { store }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn pen_message(row: PenRow) -> pb::Pen {
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
    }
}

#[tonic::async_trait]
impl FleetService for FleetApi {
    async fn register_chain(&self, request: Request<pb::RegisterChainRequest>) -> Result<Response<pb::Chain>, Status> {
        let request = request.into_inner();
        let chain = required("chain_id", &request.chain_id, ChainId::parse)?;
        let row = self.store.register_chain(&chain, &request.name, now_ms()).await.map_err(from_store)?;
        Ok(Response::new(pb::Chain { chain_id: row.chain_id, name: row.name }))
    }

    async fn register_clinic(
        &self,
        request: Request<pb::RegisterClinicRequest>,
    ) -> Result<Response<pb::Clinic>, Status> {
        let request = request.into_inner();
        let clinic = required("clinic_id", &request.clinic_id, ClinicId::parse)?;
        let chain = required("chain_id", &request.chain_id, ChainId::parse)?;
        let row = self.store.register_clinic(&clinic, &chain, &request.name, now_ms()).await.map_err(from_store)?;
        Ok(Response::new(pb::Clinic { clinic_id: row.clinic_id, chain_id: row.chain_id, name: row.name }))
    }

    async fn register_pen(&self, request: Request<pb::RegisterPenRequest>) -> Result<Response<pb::Pen>, Status> {
        let request = request.into_inner();
        let pen = required("pen_serial", &request.pen_serial, PenSerial::parse)?;
        let clinic = optional("clinic_id", &request.clinic_id, ClinicId::parse)?;
        let row = self.store.register_pen(&pen, clinic.as_ref(), &request.model, now_ms()).await.map_err(from_store)?;
        Ok(Response::new(pen_message(row)))
    }

    async fn list_pens(&self, request: Request<pb::ListPensRequest>) -> Result<Response<pb::ListPensResponse>, Status> {
        let request = request.into_inner();
        let clinic = optional("clinic_id", &request.clinic_id, ClinicId::parse)?;
        let chain = optional("chain_id", &request.chain_id, ChainId::parse)?;
        let rows = self.store.list_pens(clinic.as_ref(), chain.as_ref()).await.map_err(from_store)?;
        Ok(Response::new(pb::ListPensResponse { pens: rows.into_iter().map(pen_message).collect() }))
    }
}

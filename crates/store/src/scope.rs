//! Narrowing queries to what a caller may see. Every read the API makes goes through one of
//! these, so a filter in a request can only narrow a caller's scope, never widen it.

use penwarden_domain::access::Scope;

use crate::statement::SqlBuilder;

/// Appends ` AND <condition>` limiting rows of `table` (sessions or violations: both carry
/// pen_serial, clinic_id, chain_id, cartridge_gtin and cartridge_serial) to `scope`. A
/// manufacturer sees sessions with its cartridges, and sessions on its pens.
pub(crate) fn push_record_scope(query: &mut impl SqlBuilder, scope: &Scope, table: &str) {
    match scope {
        Scope::All => {}
        Scope::Chain(chain) => {
            query.push_sql(&format!(" AND {table}.chain_id = ")).push_text(chain.as_str());
        }
        Scope::Clinic(clinic) => {
            query.push_sql(&format!(" AND {table}.clinic_id = ")).push_text(clinic.as_str());
        }
        Scope::Manufacturer(manufacturer) => {
            query
                .push_sql(&format!(
                    " AND (EXISTS (SELECT 1 FROM cartridges sc JOIN lots sl ON sl.gtin = sc.gtin AND sl.lot = sc.lot
                        WHERE sc.gtin = {table}.cartridge_gtin AND sc.serial = {table}.cartridge_serial
                          AND sl.manufacturer_id = "
                ))
                .push_text(manufacturer)
                .push_sql(&format!(
                    ") OR EXISTS (SELECT 1 FROM pens sp WHERE sp.pen_serial = {table}.pen_serial AND sp.manufacturer_id = "
                ))
                .push_text(manufacturer)
                .push_sql("))");
        }
    }
}

/// Appends ` AND <condition>` limiting pens (`p`, joined to their clinic as `c`) to `scope`.
pub(crate) fn push_pen_scope(query: &mut impl SqlBuilder, scope: &Scope) {
    match scope {
        Scope::All => {}
        Scope::Chain(chain) => {
            query.push_sql(" AND c.chain_id = ").push_text(chain.as_str());
        }
        Scope::Clinic(clinic) => {
            query.push_sql(" AND p.clinic_id = ").push_text(clinic.as_str());
        }
        Scope::Manufacturer(manufacturer) => {
            query.push_sql(" AND p.manufacturer_id = ").push_text(manufacturer);
        }
    }
}

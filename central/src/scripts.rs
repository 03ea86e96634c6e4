//! Central's script library: named, versioned scripts of one tenant, in
//! the site's JSON shape plus `customer` (`null`: the whole tenant's;
//! a customer: only that customer's users see it and it runs only on
//! that customer's devices). Editing stores a new version; versions are
//! never rewritten. A run sends `CommandKind::Script` with the body of
//! the version it was queued with, so an edit never changes a queued run.
//!
//! This module owns the record and its pure rules (who sees, who edits,
//! where it may run). Storage is [`crate::store::CommandStore`]'s script
//! methods; HTTP is [`crate::api_scripts`]. It must not touch commands'
//! delivery.

use outpost_proto::CustomerId;
use outpost_proto::command::Interpreter;
use serde::{Deserialize, Serialize};

use crate::model::Principal;

/// One version of a script of central's library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CentralScript {
    pub name: String,
    pub version: u32,
    pub interpreter: Interpreter,
    pub body: String,
    /// Timeout of runs that do not give one.
    pub default_timeout_ms: u64,
    /// Names of the positional parameters (`$1`...), for people.
    pub parameters: Vec<String>,
    pub created_ms: u64,
    pub created_by: String,
    /// `None`: the tenant's; `Some(c)`: customer `c`'s only. Fixed at
    /// creation (every version keeps it).
    pub customer: Option<CustomerId>,
}

/// Whether `p` sees (reads, runs) script `s`.
pub fn visible(p: &Principal, s: &CentralScript) -> bool {
    match &s.customer {
        None => true,
        Some(c) => p.sees_customer(c),
    }
}

/// Whether `p` may add or edit a script of `customer` (`None`: the
/// tenant's). Admins only (the caller checks the role); a tenant-wide
/// script needs a tenant-wide admin. `Err` says why not.
pub fn may_edit(p: &Principal, customer: Option<&CustomerId>) -> Result<(), String> {
    match customer {
        None if !p.is_tenant_wide() => Err(
            "a script of the whole tenant needs a tenant-wide admin; give \"customer\" to add one for a customer you manage"
                .into(),
        ),
        Some(c) if !p.sees_customer(c) => Err(format!("customer {c} is not in your scope")),
        _ => Ok(()),
    }
}

/// Whether script `s` may run on a device of `customer`.
pub fn runs_on(s: &CentralScript, customer: &CustomerId) -> Result<(), String> {
    match &s.customer {
        Some(c) if c != customer => Err(format!(
            "script {} belongs to customer {c}; it does not run on devices of {customer}",
            s.name
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn p(customers: &[&str]) -> Principal {
        Principal {
            tenant: "msp".into(),
            role: Role::Admin,
            customers: customers.iter().map(|c| (*c).into()).collect(),
            name: "ann".into(),
        }
    }

    fn script(customer: Option<&str>) -> CentralScript {
        CentralScript {
            name: "cleanup".into(),
            version: 1,
            interpreter: Interpreter::Sh,
            body: "echo".into(),
            default_timeout_ms: 1_000,
            parameters: vec![],
            created_ms: 1,
            created_by: "ann".into(),
            customer: customer.map(Into::into),
        }
    }

    #[test]
    fn a_customers_script_is_seen_and_edited_only_within_that_customer() {
        let dental = script(Some("dental"));
        assert!(visible(&p(&[]), &dental));
        assert!(visible(&p(&["dental"]), &dental));
        assert!(!visible(&p(&["acme"]), &dental));
        assert!(visible(&p(&["acme"]), &script(None)));
        assert!(may_edit(&p(&[]), None).is_ok());
        assert!(may_edit(&p(&["acme"]), None).is_err());
        assert!(may_edit(&p(&["acme"]), Some(&"acme".into())).is_ok());
        assert!(may_edit(&p(&["acme"]), Some(&"dental".into())).is_err());
    }

    #[test]
    fn a_customers_script_runs_only_on_that_customers_devices() {
        assert!(runs_on(&script(Some("dental")), &"dental".into()).is_ok());
        assert!(runs_on(&script(Some("dental")), &"acme".into()).is_err());
        assert!(runs_on(&script(None), &"acme".into()).is_ok());
    }
}

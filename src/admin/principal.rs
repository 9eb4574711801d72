//! Who a `/v1` request is from, as the routes see it: the operator, or a tenant that sees
//! only its own subscriptions, named without its prefix.

use axum::http::StatusCode;

use crate::config::{Source, TenantConfig};
use crate::problem::Problem;

/// Who a request is from; put in the request's extensions for the routes.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Sees and operates everything.
    Operator,
    /// Sees and operates only the subscriptions it made, named without its prefix.
    Tenant(TenantConfig),
}

impl Principal {
    /// The full name of the subscription a path names: `<tenant>.<name>` for a tenant.
    pub fn full_name(&self, name: &str) -> String {
        match self {
            Principal::Operator => name.to_string(),
            Principal::Tenant(tenant) => format!("{}.{name}", tenant.name),
        }
    }

    /// The name it knows the subscription `full` by.
    pub fn shown_name(&self, full: &str) -> String {
        match self {
            Principal::Operator => full.to_string(),
            Principal::Tenant(tenant) => full
                .strip_prefix(&format!("{}.", tenant.name))
                .unwrap_or(full)
                .to_string(),
        }
    }

    /// Whether it may see and operate a subscription defined by `source`.
    pub fn owns(&self, source: &Source) -> bool {
        match (self, source) {
            (Principal::Operator, _) => true,
            (
                Principal::Tenant(tenant),
                Source::Api {
                    tenant: Some(owner),
                },
            ) => owner == &tenant.name,
            (Principal::Tenant(_), _) => false,
        }
    }

    /// The tenant it is, if any.
    pub fn tenant(&self) -> Option<&TenantConfig> {
        match self {
            Principal::Operator => None,
            Principal::Tenant(tenant) => Some(tenant),
        }
    }

    /// Refuses a tenant a route that is the operator's only.
    pub fn operator_only(&self) -> Result<(), Box<Problem>> {
        match self {
            Principal::Operator => Ok(()),
            Principal::Tenant(_) => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                "this route is the operator's (server.admin_token); a tenant's token manages its own subscriptions only",
            )
            .into()),
        }
    }
}

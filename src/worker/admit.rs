//! Admission: the worker policy applied to a job before it is claimed, so a job
//! that breaks it never gets a workspace, a secret or a request sent on its behalf.
//! A trusted job file (`fleet run` without `--policy worker`) skips the policy but
//! not [`policy::check_values`].

use super::runner::Services;
use crate::config;
use crate::job::JobSpec;
use crate::policy::{self, Violation};

/// Whether `spec` may run here.
pub async fn admit(svc: &Services, spec: &JobSpec) -> Result<(), Violation> {
    if svc.enforce_policy {
        svc.policy.check(spec).await
    } else {
        policy::check_values(spec, &config::env)
    }
}

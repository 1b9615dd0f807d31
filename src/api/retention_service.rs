//! `artifactd.v1.RetentionService`: retention policies and their runs, legal holds, the trash.

use super::caller;
use super::convert::{lifecycle_state, lifecycle_state_from, timestamp};
use crate::app::{Artifacts, PolicyInput};
use crate::domain::retention::{
    Decision, KeepRules, LegalHold, PolicySpec, RetentionAction, RetentionPolicy, RetentionRun, Verdict,
};
use crate::domain::{Error, LifecycleState, Result, Scope, Timestamp};
use crate::identity::Caller;
use crate::proto::retention_service_server::RetentionService;
use crate::proto::{self, create_retention_policy_request, update_retention_policy_request};
use tonic::{Request, Response, Status};

pub struct RetentionApi {
    artifacts: Artifacts,
}

impl RetentionApi {
    pub fn new(artifacts: Artifacts) -> Self {
        Self { artifacts }
    }
}

fn authorized(caller: &Caller, tenant: String, project: String) -> Result<Scope> {
    super::request_layer::record_scope(&tenant, &project);
    caller.authorize_in(&tenant, Some(&project))?;
    Ok(Scope::new(tenant, project))
}

fn spec_from(spec: proto::RetentionPolicySpec) -> Result<PolicySpec> {
    let action = match proto::RetentionAction::try_from(spec.action) {
        Ok(proto::RetentionAction::Archive) => RetentionAction::Archive,
        Ok(proto::RetentionAction::Delete) => RetentionAction::Delete,
        Ok(proto::RetentionAction::Unspecified) => {
            return Err(Error::invalid(
                "policy.action",
                "is unset; choose archive or delete",
            ));
        }
        Err(_) => {
            return Err(Error::invalid(
                "policy.action",
                format!("{} is not an action (1 archive, 2 delete)", spec.action),
            ));
        }
    };
    let mut states = Vec::new();
    for value in spec.states {
        match lifecycle_state_from("policy.states", value)? {
            Some(state) => states.push(state),
            None => return Err(Error::invalid("policy.states", "an entry is unspecified")),
        }
    }
    let keep = spec.keep.unwrap_or_default();
    Ok(PolicySpec {
        artifact_types: spec.artifact_types,
        name_pattern: Some(spec.name_pattern).filter(|p| !p.is_empty()),
        keep: KeepRules {
            latest: keep.latest,
            created_within_days: keep.created_within_days,
            read_within_days: keep.read_within_days,
            version_pattern: Some(keep.version_pattern).filter(|p| !p.is_empty()),
        },
        action,
        states,
        allow_approved: spec.allow_approved,
        schedule_seconds: spec.schedule_seconds,
    })
}

/// The policy from a request's `spec` or `document`, whichever it carries.
fn policy_input(
    name: String,
    spec: Option<proto::RetentionPolicySpec>,
    document: Option<String>,
) -> Result<PolicyInput> {
    let spec = match (spec, document) {
        (Some(spec), _) => spec_from(spec)?,
        (None, Some(document)) => PolicySpec::from_document(&document)?,
        (None, None) => {
            return Err(Error::invalid("policy", "is missing; give a spec or a document"));
        }
    };
    Ok(PolicyInput { name, spec })
}

fn spec_to_proto(spec: &PolicySpec) -> proto::RetentionPolicySpec {
    proto::RetentionPolicySpec {
        artifact_types: spec.artifact_types.clone(),
        name_pattern: spec.name_pattern.clone().unwrap_or_default(),
        keep: Some(proto::KeepRules {
            latest: spec.keep.latest,
            created_within_days: spec.keep.created_within_days,
            read_within_days: spec.keep.read_within_days,
            version_pattern: spec.keep.version_pattern.clone().unwrap_or_default(),
        }),
        action: match spec.action {
            RetentionAction::Archive => proto::RetentionAction::Archive,
            RetentionAction::Delete => proto::RetentionAction::Delete,
        } as i32,
        states: spec.states.iter().map(|s| lifecycle_state(*s) as i32).collect(),
        allow_approved: spec.allow_approved,
        schedule_seconds: spec.schedule_seconds,
    }
}

fn policy_to_proto(policy: &RetentionPolicy) -> proto::RetentionPolicy {
    proto::RetentionPolicy {
        id: policy.id.clone(),
        tenant: policy.tenant.clone(),
        project: policy.project.clone(),
        name: policy.name.clone(),
        spec: Some(spec_to_proto(&policy.spec)),
        revision: policy.revision,
        created_by: policy.created_by.clone(),
        created_at: Some(timestamp(Timestamp(policy.created_at))),
        updated_at: Some(timestamp(Timestamp(policy.updated_at))),
        last_run_at: policy.last_run_at.map(|at| timestamp(Timestamp(at))),
        document: serde_norway::to_string(&policy.spec).unwrap_or_default(),
    }
}

fn decision_to_proto(decision: &Decision) -> proto::RetentionDecision {
    let state = LifecycleState::parse("state", &decision.state).unwrap_or_default();
    proto::RetentionDecision {
        artifact_id: decision.artifact_id.clone(),
        artifact_name: decision.artifact_name.clone(),
        version: decision.version.clone(),
        state: lifecycle_state(state) as i32,
        verdict: match decision.verdict {
            Verdict::Keep => proto::RetentionVerdict::Keep,
            Verdict::Archive => proto::RetentionVerdict::Archive,
            Verdict::Delete => proto::RetentionVerdict::Delete,
        } as i32,
        rule: decision.rule.clone(),
        reason: decision.reason.clone(),
    }
}

fn run_to_proto(run: &RetentionRun) -> proto::RetentionRun {
    proto::RetentionRun {
        id: run.id.clone(),
        policy_id: run.policy_id.clone(),
        policy_name: run.policy_name.clone(),
        policy_revision: run.policy_revision,
        trigger: run.trigger.as_str().to_owned(),
        dry_run: run.dry_run,
        started_at: Some(timestamp(Timestamp(run.started_at))),
        finished_at: Some(timestamp(Timestamp(run.finished_at))),
        plan: run.plan.clone(),
        examined: run.examined,
        kept: run.kept,
        affected: run.affected.iter().map(decision_to_proto).collect(),
        applied: run.applied,
        skipped: run
            .skipped
            .iter()
            .map(|s| proto::RetentionSkip {
                artifact_id: s.artifact_id.clone(),
                version: s.version.clone(),
                reason: s.reason.clone(),
            })
            .collect(),
    }
}

fn hold_to_proto(hold: &LegalHold) -> proto::LegalHold {
    proto::LegalHold {
        artifact_id: hold.artifact_id.clone(),
        version: hold.version.clone(),
        reason: hold.reason.clone(),
        held_by: hold.held_by.clone(),
        held_at: Some(timestamp(Timestamp(hold.held_at))),
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn create_retention_policy(
        &self,
        request: Request<proto::CreateRetentionPolicyRequest>,
    ) -> Result<Response<proto::CreateRetentionPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let (spec, document) = match request.policy {
            Some(create_retention_policy_request::Policy::Spec(spec)) => (Some(spec), None),
            Some(create_retention_policy_request::Policy::Document(document)) => (None, Some(document)),
            None => (None, None),
        };
        let input = policy_input(request.name, spec, document)?;
        let policy = self
            .artifacts
            .create_retention_policy(&scope, input, &caller.actor())
            .await?;
        caller.target(&format!("retention-policy:{}", policy.id));
        Ok(Response::new(proto::CreateRetentionPolicyResponse {
            policy: Some(policy_to_proto(&policy)),
        }))
    }

    async fn get_retention_policy(
        &self,
        request: Request<proto::GetRetentionPolicyRequest>,
    ) -> Result<Response<proto::GetRetentionPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let policy = self
            .artifacts
            .retention_policy(&scope, &request.policy_id)
            .await?;
        Ok(Response::new(proto::GetRetentionPolicyResponse {
            policy: Some(policy_to_proto(&policy)),
        }))
    }

    async fn list_retention_policies(
        &self,
        request: Request<proto::ListRetentionPoliciesRequest>,
    ) -> Result<Response<proto::ListRetentionPoliciesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let policies = self.artifacts.retention_policies(&scope).await?;
        Ok(Response::new(proto::ListRetentionPoliciesResponse {
            policies: policies.iter().map(policy_to_proto).collect(),
        }))
    }

    async fn update_retention_policy(
        &self,
        request: Request<proto::UpdateRetentionPolicyRequest>,
    ) -> Result<Response<proto::UpdateRetentionPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&format!("retention-policy:{}", request.policy_id));
        let scope = authorized(&caller, request.tenant, request.project)?;
        let (spec, document) = match request.policy {
            Some(update_retention_policy_request::Policy::Spec(spec)) => (Some(spec), None),
            Some(update_retention_policy_request::Policy::Document(document)) => (None, Some(document)),
            None => (None, None),
        };
        let input = policy_input(request.name, spec, document)?;
        let policy = self
            .artifacts
            .update_retention_policy(&scope, &request.policy_id, request.expected_revision, input)
            .await?;
        Ok(Response::new(proto::UpdateRetentionPolicyResponse {
            policy: Some(policy_to_proto(&policy)),
        }))
    }

    async fn delete_retention_policy(
        &self,
        request: Request<proto::DeleteRetentionPolicyRequest>,
    ) -> Result<Response<proto::DeleteRetentionPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&format!("retention-policy:{}", request.policy_id));
        let scope = authorized(&caller, request.tenant, request.project)?;
        self.artifacts
            .delete_retention_policy(&scope, &request.policy_id)
            .await?;
        Ok(Response::new(proto::DeleteRetentionPolicyResponse {}))
    }

    async fn evaluate_retention_policy(
        &self,
        request: Request<proto::EvaluateRetentionPolicyRequest>,
    ) -> Result<Response<proto::EvaluateRetentionPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&format!("retention-policy:{}", request.policy_id));
        let scope = authorized(&caller, request.tenant, request.project)?;
        let run = self
            .artifacts
            .evaluate_retention_policy(&scope, &request.policy_id)
            .await?;
        Ok(Response::new(proto::EvaluateRetentionPolicyResponse {
            run: Some(run_to_proto(&run)),
        }))
    }

    async fn execute_retention_policy(
        &self,
        request: Request<proto::ExecuteRetentionPolicyRequest>,
    ) -> Result<Response<proto::ExecuteRetentionPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&format!("retention-policy:{}", request.policy_id));
        let scope = authorized(&caller, request.tenant, request.project)?;
        let run = self
            .artifacts
            .execute_retention_policy(
                &scope,
                &request.policy_id,
                Some(request.expected_plan.as_str()),
                &caller.actor(),
            )
            .await?;
        Ok(Response::new(proto::ExecuteRetentionPolicyResponse {
            run: Some(run_to_proto(&run)),
        }))
    }

    async fn list_retention_runs(
        &self,
        request: Request<proto::ListRetentionRunsRequest>,
    ) -> Result<Response<proto::ListRetentionRunsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let runs = self
            .artifacts
            .retention_runs(&scope, &request.policy_id, request.limit)
            .await?;
        Ok(Response::new(proto::ListRetentionRunsResponse {
            runs: runs.iter().map(run_to_proto).collect(),
        }))
    }

    async fn get_retention_run(
        &self,
        request: Request<proto::GetRetentionRunRequest>,
    ) -> Result<Response<proto::GetRetentionRunResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let run = self.artifacts.retention_run(&scope, &request.run_id).await?;
        Ok(Response::new(proto::GetRetentionRunResponse {
            run: Some(run_to_proto(&run)),
        }))
    }

    async fn set_legal_hold(
        &self,
        request: Request<proto::SetLegalHoldRequest>,
    ) -> Result<Response<proto::SetLegalHoldResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = authorized(&caller, request.tenant, request.project)?;
        let hold = self
            .artifacts
            .set_legal_hold(
                &scope,
                &request.artifact_id,
                &request.version,
                &request.reason,
                &caller.actor(),
            )
            .await?;
        Ok(Response::new(proto::SetLegalHoldResponse {
            hold: Some(hold_to_proto(&hold)),
        }))
    }

    async fn release_legal_hold(
        &self,
        request: Request<proto::ReleaseLegalHoldRequest>,
    ) -> Result<Response<proto::ReleaseLegalHoldResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = authorized(&caller, request.tenant, request.project)?;
        self.artifacts
            .release_legal_hold(&scope, &request.artifact_id, &request.version)
            .await?;
        Ok(Response::new(proto::ReleaseLegalHoldResponse {}))
    }

    async fn list_legal_holds(
        &self,
        request: Request<proto::ListLegalHoldsRequest>,
    ) -> Result<Response<proto::ListLegalHoldsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let holds = self.artifacts.legal_holds(&scope).await?;
        Ok(Response::new(proto::ListLegalHoldsResponse {
            holds: holds.iter().map(hold_to_proto).collect(),
        }))
    }

    async fn list_trash(
        &self,
        request: Request<proto::ListTrashRequest>,
    ) -> Result<Response<proto::ListTrashResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let page = self
            .artifacts
            .trash(&scope, &request.page_token, request.page_size)
            .await?;
        Ok(Response::new(proto::ListTrashResponse {
            items: page
                .items
                .into_iter()
                .map(|(item, until)| proto::TrashItem {
                    artifact_id: item.artifact_id,
                    artifact_type: item.artifact_type,
                    name: item.name,
                    version: item.version,
                    size: item.size,
                    deleted_at: Some(timestamp(Timestamp(item.deleted_at))),
                    deleted_by: item.deleted_by,
                    restorable_until: Some(timestamp(until)),
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn purge_trash(
        &self,
        request: Request<proto::PurgeTrashRequest>,
    ) -> Result<Response<proto::PurgeTrashResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&if request.version.is_empty() {
            request.artifact_id.clone()
        } else {
            format!("{}@{}", request.artifact_id, request.version)
        });
        let scope = authorized(&caller, request.tenant, request.project)?;
        self.artifacts
            .purge(&scope, &request.artifact_id, &request.version)
            .await?;
        Ok(Response::new(proto::PurgeTrashResponse {}))
    }
}

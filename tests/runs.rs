//! Workflow runs over gRPC against the built binary, on both catalogs: versions recording the
//! run that produced them, runs' inputs from downloads carrying the run header and from
//! explicit records, a run's inputs and outputs, and a version's provenance.

mod common;

use artifactd::proto::{
    self, GetProvenanceRequest, GetRunRequest, RecordRunInputsRequest, RunInput, WorkflowRun,
};
use common::client::{Client, assert_status, create, download_as_run, download_request, header};
use std::collections::BTreeSet;
use tonic::Code;

const T: &str = "acme";
const P: &str = "runs";

fn run(id: &str, workflow: &str, agent: &str) -> WorkflowRun {
    WorkflowRun {
        run_id: id.into(),
        workflow: workflow.into(),
        step: "1".into(),
        agent: agent.into(),
    }
}

async fn produce(client: &mut Client, artifact_type: &str, name: &str, by: Option<WorkflowRun>) -> String {
    let mut first = header(T, P, artifact_type, name);
    first.produced_by = by;
    create(client, first, format!("# {name}\n").as_bytes())
        .await
        .unwrap()
        .artifact
        .unwrap()
        .id
}

/// Downloads a version as a run would: with the run header.
async fn download_as(client: &mut Client, run_id: &str, id: &str) -> Result<(), tonic::Status> {
    download_as_run(client, run_id, download_request(T, P, id, ""))
        .await
        .map(drop)
}

fn names(versions: &[proto::RunVersion]) -> BTreeSet<(String, String, String)> {
    versions
        .iter()
        .map(|v| (v.name.clone(), v.version.clone(), v.how.clone()))
        .collect()
}

async fn runs_record_inputs_outputs_and_provenance(postgres: bool) {
    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let mut client = server.client().await;
    let prd = produce(
        &mut client,
        "prd",
        "prd.md",
        Some(run("run-1", "create-prd", "pm")),
    )
    .await;
    let brief = produce(&mut client, "brief", "brief.md", None).await;

    // Run 2 reads the PRD by downloading it and names the brief explicitly.
    download_as(&mut client, "run-2", &prd).await.unwrap();
    download_as(&mut client, "run-2", &prd).await.unwrap();
    let recorded = client
        .record_run_inputs(RecordRunInputsRequest {
            tenant: T.into(),
            project: P.into(),
            run_id: "run-2".into(),
            inputs: vec![RunInput {
                artifact_id: brief.clone(),
                version: String::new(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.inputs[0].version, "1.0.0");
    let arch = produce(
        &mut client,
        "architecture",
        "arch.md",
        Some(run("run-2", "create-architecture", "architect")),
    )
    .await;
    download_as(&mut client, "run-3", &arch).await.unwrap();
    let story = produce(
        &mut client,
        "story",
        "story.md",
        Some(run("run-3", "create-story", "sm")),
    )
    .await;

    let got = client
        .get_artifact(proto::GetArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            selector: Some(proto::get_artifact_request::Selector::ArtifactId(arch.clone())),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.version.unwrap().produced_by,
        Some(run("run-2", "create-architecture", "architect"))
    );

    let two = client
        .get_run(GetRunRequest {
            tenant: T.into(),
            run_id: "run-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names(&two.inputs),
        BTreeSet::from([
            ("prd.md".into(), "1.0.0".into(), "download".into()),
            ("brief.md".into(), "1.0.0".into(), "explicit".into()),
        ]),
        "a download repeated is one input"
    );
    assert_eq!(
        names(&two.outputs),
        BTreeSet::from([("arch.md".into(), "1.0.0".into(), String::new())])
    );

    let provenance = client
        .get_provenance(GetProvenanceRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: story.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let steps: Vec<(u32, String, Vec<String>)> = provenance
        .steps
        .iter()
        .map(|s| {
            let mut read: Vec<String> = s.read.iter().map(|r| r.name.clone()).collect();
            read.sort();
            (s.depth, s.version.as_ref().unwrap().name.clone(), read)
        })
        .collect();
    let mut expected = vec![
        (0, "story.md".to_owned(), vec!["arch.md".to_owned()]),
        (
            1,
            "arch.md".to_owned(),
            vec!["brief.md".to_owned(), "prd.md".to_owned()],
        ),
        (2, "brief.md".to_owned(), vec![]),
        (2, "prd.md".to_owned(), vec![]),
    ];
    let mut sorted = steps.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected);
    assert!(!provenance.truncated);
    let mut shallow = GetProvenanceRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: story.clone(),
        max_depth: 1,
        ..Default::default()
    };
    let cut = client.get_provenance(shallow.clone()).await.unwrap().into_inner();
    assert!(cut.truncated, "the PRD's run was not followed");
    shallow.max_depth = 10_000;
    assert_status(
        client.get_provenance(shallow).await,
        Code::InvalidArgument,
        &["max_depth:"],
    );

    // Bad input names what is wrong, and records nothing.
    assert_status(
        download_as(&mut client, "bad run id", &prd).await,
        Code::InvalidArgument,
        &["x-artifactd-run:"],
    );
    assert_status(
        client
            .record_run_inputs(RecordRunInputsRequest {
                tenant: T.into(),
                project: P.into(),
                run_id: "run-9".into(),
                inputs: vec![
                    RunInput {
                        artifact_id: prd.clone(),
                        version: String::new(),
                    },
                    RunInput {
                        artifact_id: prd.clone(),
                        version: "7.0.0".into(),
                    },
                ],
            })
            .await,
        Code::NotFound,
        &["version 7.0.0"],
    );
    assert_status(
        client
            .get_run(GetRunRequest {
                tenant: T.into(),
                run_id: "run-9".into(),
            })
            .await,
        Code::NotFound,
        &["no run \"run-9\""],
    );
    let mut bad = header(T, P, "prd", "bad.md");
    bad.produced_by = Some(run("no spaces allowed", "w", "a"));
    assert_status(
        create(&mut client, bad, b"x").await,
        Code::InvalidArgument,
        &["produced_by.run_id:"],
    );
    // Runs are per tenant.
    assert_status(
        client
            .get_run(GetRunRequest {
                tenant: "other".into(),
                run_id: "run-2".into(),
            })
            .await,
        Code::NotFound,
        &["run-2"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_record_inputs_outputs_and_provenance_on_sqlite() {
    runs_record_inputs_outputs_and_provenance(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_record_inputs_outputs_and_provenance_on_postgres() {
    runs_record_inputs_outputs_and_provenance(true).await;
}

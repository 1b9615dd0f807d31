//! Search quality on the known-item evaluation (`benches/search_eval/queries.json` over the
//! BMAD docs corpus): the goals of recall@3 ≥ 0.95 for exact sentences and titles and ≥ 0.85
//! for questions, as `cargo bench --bench search` prints them. Figures, not timings: they
//! depend only on the index and the queries.

mod common;

use artifactd::search::SearchIndex;

#[test]
fn known_item_search_meets_its_goals() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let names = common::search_eval::load(&index);
    let figures = common::search_eval::evaluate(&index, &names, artifactd::search::QuerySyntax::Natural);
    for (kind, f) in &figures {
        println!(
            "{kind}: {} queries, recall@1 {:.3}, recall@3 {:.3}, mrr {:.3}",
            f.queries, f.recall_at_1, f.recall_at_3, f.mrr
        );
        for (query, top) in &f.misses {
            println!("  missed {query:?}: {top:?}");
        }
    }
    for (kind, goal) in [("sentence", 0.95), ("title", 0.95), ("question", 0.85)] {
        let f = &figures[kind];
        assert!(f.queries >= 20, "{kind}: at least 20 queries");
        assert!(
            f.recall_at_3 >= goal,
            "{kind}: recall@3 {:.3} is below the goal {goal}",
            f.recall_at_3
        );
    }
}

/// One tenant's results (documents, order and scores) are the same before and after another
/// tenant loads a large corpus of its own, and deletes some of it.
#[test]
fn another_tenants_content_never_changes_a_tenants_scores() {
    use artifactd::search::SearchRequest;
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let names = common::search_eval::load(&index);
    let queries = common::search_eval::queries();
    let results = |index: &SearchIndex, tenant: &str| -> Vec<Vec<(String, u32, String)>> {
        queries
            .iter()
            .map(|q| {
                index
                    .search(&SearchRequest {
                        tenant: tenant.into(),
                        project: common::search_eval::PROJECT.into(),
                        query: q.query.clone(),
                        page_size: 10,
                        ..Default::default()
                    })
                    .unwrap()
                    .hits
                    .into_iter()
                    .map(|h| (h.artifact_id, h.score.to_bits(), h.snippet_text))
                    .collect()
            })
            .collect()
    };
    let before = results(&index, common::search_eval::TENANT);

    // Another tenant: the same corpus three times over, each copy skewed towards other
    // words, then a third of it deleted.
    let files = common::search_eval::corpus(&common::corpus_dir().join("bmad-docs"));
    let mut changes = Vec::new();
    for copy in 0..3 {
        for (number, (name, text)) in files.iter().enumerate() {
            let skewed = format!(
                "{text}\n{}\n",
                "agent workflow story of the ".repeat(copy * 20 + number % 7)
            );
            let id = format!("other-{copy}-{number:04}");
            changes.push((
                id.clone(),
                Some(common::search_eval::document("globex", "docs", id, name, &skewed)),
            ));
        }
    }
    index.apply(changes, 2).unwrap();
    let deleted = (0..files.len())
        .step_by(3)
        .map(|n| (format!("other-1-{n:04}"), None))
        .collect();
    index.apply(deleted, 3).unwrap();

    let after = results(&index, common::search_eval::TENANT);
    assert_eq!(before.len(), after.len());
    for ((query, b), a) in queries.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "{:?} ranks, scores and shows alike", query.query);
    }
    // The other tenant's own scores differ: the statistics are really per tenant.
    let theirs = results(&index, "globex");
    assert_ne!(before, theirs);
    assert!(names.len() > 300);
}

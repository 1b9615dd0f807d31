//! Ranking statistics per tenant. BM25 weighs a word by how rare it is among the documents
//! and a match by the document's length against the average; computed over the whole index,
//! one tenant's uploads would change another tenant's scores and order, and the scores would
//! tell a tenant which words other tenants' documents hold. These statistics count only the
//! tenant's own live documents: a tenant's results depend on its content alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, DocSet, Searcher, TERMINATED, Term};

/// Statistics kept for this many (index generation, tenant) pairs.
const CACHED: usize = 32;

/// One segment as seen by one tenant.
struct SegmentShare {
    /// The tenant's live documents, ascending.
    docs: Vec<DocId>,
    member: tantivy::BitSet,
    /// Every document of the segment is live and the tenant's: the segment's document
    /// frequencies are the tenant's, exactly and at no cost.
    whole: bool,
}

/// What one tenant's statistics are built from in one searcher generation, with what has
/// been computed so far.
pub(super) struct TenantShare {
    segments: Vec<SegmentShare>,
    num_docs: u64,
    tokens: Mutex<HashMap<Field, u64>>,
    doc_freqs: Mutex<HashMap<Term, u64>>,
}

impl TenantShare {
    fn compute(searcher: &Searcher, tenant_term: &Term) -> tantivy::Result<Self> {
        let mut segments = Vec::with_capacity(searcher.segment_readers().len());
        let mut num_docs = 0;
        for reader in searcher.segment_readers() {
            let mut docs = Vec::new();
            let mut member = tantivy::BitSet::with_max_value(reader.max_doc().max(1));
            let inverted = reader.inverted_index(tenant_term.field())?;
            if let Some(mut postings) = inverted.read_postings(tenant_term, IndexRecordOption::Basic)? {
                let alive = reader.alive_bitset();
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    if alive.is_none_or(|bits| bits.is_alive(doc)) {
                        docs.push(doc);
                        member.insert(doc);
                    }
                    doc = postings.advance();
                }
            }
            num_docs += docs.len() as u64;
            let whole = !reader.has_deletes() && docs.len() as u32 == reader.max_doc();
            segments.push(SegmentShare { docs, member, whole });
        }
        Ok(Self {
            segments,
            num_docs,
            tokens: Mutex::new(HashMap::new()),
            doc_freqs: Mutex::new(HashMap::new()),
        })
    }
}

/// The statistics of one tenant's documents in one searcher.
pub(super) struct TenantStatistics {
    searcher: Searcher,
    share: Arc<TenantShare>,
}

impl Bm25StatisticsProvider for TenantStatistics {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        if let Some(known) = self.share.tokens.lock().expect("statistics lock").get(&field) {
            return Ok(*known);
        }
        let mut total = 0u64;
        for (reader, share) in self.searcher.segment_readers().iter().zip(&self.share.segments) {
            if share.docs.is_empty() {
                continue;
            }
            // Always the documents' own (bucketed) lengths, never a segment's exact total: the
            // figure must not depend on which tenants share a segment after a merge.
            if let Some(norms) = reader.fieldnorms_readers().get_field(field)? {
                total += share
                    .docs
                    .iter()
                    .map(|doc| u64::from(norms.fieldnorm(*doc)))
                    .sum::<u64>();
            }
        }
        self.share
            .tokens
            .lock()
            .expect("statistics lock")
            .insert(field, total);
        Ok(total)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.share.num_docs)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        if let Some(known) = self.share.doc_freqs.lock().expect("statistics lock").get(term) {
            return Ok(*known);
        }
        let mut count = 0u64;
        for (reader, share) in self.searcher.segment_readers().iter().zip(&self.share.segments) {
            if share.docs.is_empty() {
                continue;
            }
            let inverted = reader.inverted_index(term.field())?;
            if share.whole {
                count += u64::from(inverted.doc_freq(term)?);
                continue;
            }
            if let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::Basic)? {
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    if share.member.contains(doc) {
                        count += 1;
                    }
                    doc = postings.advance();
                }
            }
        }
        self.share
            .doc_freqs
            .lock()
            .expect("statistics lock")
            .insert(term.clone(), count);
        Ok(count)
    }
}

/// A searcher generation and a tenant.
type ShareKey = (u64, String);

/// Tenants' statistics of recent searcher generations, computed on first use.
#[derive(Default)]
pub(super) struct StatisticsCache {
    entries: Mutex<Vec<(ShareKey, Arc<TenantShare>)>>,
}

impl StatisticsCache {
    pub(super) fn for_tenant(
        &self,
        searcher: &Searcher,
        tenant_field: Field,
        tenant: &str,
    ) -> tantivy::Result<TenantStatistics> {
        let key = (searcher.generation().generation_id(), tenant.to_owned());
        let found = {
            let entries = self.entries.lock().expect("statistics cache lock");
            entries
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, share)| share.clone())
        };
        let share = match found {
            Some(share) => share,
            None => {
                let share = Arc::new(TenantShare::compute(
                    searcher,
                    &Term::from_field_text(tenant_field, tenant),
                )?);
                let mut entries = self.entries.lock().expect("statistics cache lock");
                if entries.len() >= CACHED {
                    entries.remove(0);
                }
                entries.push((key, share.clone()));
                share
            }
        };
        Ok(TenantStatistics {
            searcher: searcher.clone(),
            share,
        })
    }
}

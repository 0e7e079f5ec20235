//! Listing the index in file-id order, a page at a time (`ListFiles`, for
//! `chorus verify`).
//!
//! The index is a hash map, so every page is one scan of it under the read
//! lock: O(n) per page, O(n²/limit) for a whole listing. The scan keeps only
//! the `limit` smallest ids after the cursor (a bounded heap), so it never
//! sorts or copies the whole index, and it avoids formatting most ids: for
//! two ids of one group, the text order starts with the store path and the
//! two directory bytes (fixed-width upper-case hex, so their numeric order
//! is the text order), and only ids in the cursor's or the page's boundary
//! directory need their text built. A sorted secondary index would make a
//! page O(limit log n); not worth its cost on every write while `verify` is
//! the only reader.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use proto::{FileId, FileSummary};

use super::index::Entry;
use super::Engine;

/// The most files one page holds, whatever the caller asks for.
pub const MAX_LIST_PAGE: usize = 10_000;

/// A page's ids are cut to fit this many bytes (counting
/// [`ENTRY_OVERHEAD`] per file), so the answer stays well inside the
/// frame's 1 MiB archive limit even with the longest ids.
const PAGE_BYTES: usize = 960 << 10;

/// Bytes an archived [`FileSummary`] takes besides its id's text (an
/// upper bound: string header, three integers, padding).
const ENTRY_OVERHEAD: usize = 32;

/// The part of an id's text that follows the group, as numbers:
/// `M<store>/<D1>/<D2>` where `D1 D2` are the low two bytes of `unique`.
fn bucket(id: &FileId) -> (u8, u16) {
    (id.store_path(), (id.unique() & 0xFFFF) as u16)
}

/// A page candidate, ordered by its id text.
struct Candidate {
    bucket: (u8, u16),
    summary: FileSummary,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.summary.file_id == other.summary.file_id
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.summary.file_id.cmp(&other.summary.file_id)
    }
}

/// The files whose id text sorts strictly after `after`, the smallest
/// `limit` of them in ascending order, and whether that was all of them.
/// `limit` is taken as at least 1 and at most [`MAX_LIST_PAGE`]; the page
/// ends early (not done) where its ids would pass [`PAGE_BYTES`].
pub(crate) fn select_page<'a>(
    entries: impl Iterator<Item = (&'a FileId, &'a Entry)>,
    after: &str,
    limit: usize,
) -> (Vec<FileSummary>, bool) {
    let limit = limit.clamp(1, MAX_LIST_PAGE);
    // When the cursor is itself an id, ids of its group in an earlier
    // bucket are skipped without formatting them.
    let cursor = FileId::parse(after).ok();
    let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(limit.min(1024) + 1);
    let mut more = false;
    let mut text = String::with_capacity(96);
    for (id, e) in entries {
        let b = bucket(id);
        if let Some(c) = &cursor {
            if c.group() == id.group() && b < bucket(c) {
                continue;
            }
        }
        let full = heap.len() == limit;
        if full {
            if let Some(top) = heap.peek() {
                // Ids of one group: a later bucket sorts after the page's
                // largest id, so it cannot enter the page.
                let same_group = top.summary.file_id.starts_with(id.group())
                    && top.summary.file_id.as_bytes().get(id.group().len()) == Some(&b'/');
                if same_group && b > top.bucket {
                    more = true;
                    continue;
                }
            }
        }
        text.clear();
        // Writing to a String cannot fail.
        let _ = write!(text, "{id}");
        if text.as_str() <= after {
            continue;
        }
        if full {
            more = true;
            match heap.peek() {
                Some(top) if text.as_str() < top.summary.file_id.as_str() => {
                    heap.pop();
                }
                _ => continue,
            }
        }
        heap.push(Candidate {
            bucket: b,
            summary: FileSummary {
                file_id: text.clone(),
                size: e.size,
                crc32: e.crc32,
                version: e.version,
            },
        });
    }
    let mut files: Vec<FileSummary> = heap
        .into_sorted_vec()
        .into_iter()
        .map(|c| c.summary)
        .collect();
    let mut bytes = 0;
    let fit = files
        .iter()
        .take_while(|f| {
            bytes += f.file_id.len() + ENTRY_OVERHEAD;
            bytes <= PAGE_BYTES
        })
        .count();
    if fit < files.len() {
        files.truncate(fit);
        more = true;
    }
    (files, !more)
}

impl Engine {
    /// Files in ascending file-id (text) order strictly after `after`
    /// (empty: from the start), at most `limit` (1 to [`MAX_LIST_PAGE`]),
    /// with each file's size, crc32 and version; the flag is set when no
    /// file follows the page. Each page is a fresh scan of the index (see
    /// the module docs), so a listing that spans changes is not a snapshot.
    pub fn list_files(&self, after: &str, limit: usize) -> (Vec<FileSummary>, bool) {
        let idx = self.index.read();
        select_page(idx.iter(), after, limit)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proto::MetaEntry;
    use rand::{Rng, SeedableRng};

    use super::super::index::Loc;
    use super::super::tests::{config, pattern, VecBody};
    use super::*;

    fn entry(size: u64, crc32: u32, version: u64) -> Entry {
        Entry {
            loc: Loc::Large { store: 0 },
            size,
            crc32,
            create_us: 1,
            modify_us: 2,
            version,
            appender: false,
            meta: Vec::new(),
            extent: None,
        }
    }

    /// Page through everything with `select_page`, as a client would.
    fn page_all(map: &HashMap<FileId, Entry>, limit: usize) -> Vec<FileSummary> {
        let mut out: Vec<FileSummary> = Vec::new();
        let mut after = String::new();
        for _ in 0..=map.len() + 1 {
            let (page, done) = select_page(map.iter(), &after, limit);
            assert!(page.len() <= limit.max(1));
            assert!(
                done || page.len() == limit.max(1),
                "a short page must be the last"
            );
            if let Some(last) = page.last() {
                after = last.file_id.clone();
            }
            out.extend(page);
            if done {
                return out;
            }
        }
        panic!("listing did not finish");
    }

    #[test]
    fn bucket_order_is_text_order() {
        // The shortcut in `select_page` relies on this.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let a =
                FileId::new("g1", rng.random_range(0..20), 1, 2, 3, 4, rng.random(), "").unwrap();
            let b =
                FileId::new("g1", rng.random_range(0..20), 1, 2, 3, 4, rng.random(), "").unwrap();
            let (ba, bb) = (bucket(&a), bucket(&b));
            if ba != bb {
                assert_eq!(ba.cmp(&bb), a.to_string().cmp(&b.to_string()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn pages_match_a_full_sort() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut map = HashMap::new();
        for i in 0..600u64 {
            // Few buckets, so many ids share one and need their text
            // compared; several store paths and extensions.
            let unique = (rng.random::<u64>() & !0xFFFF) | rng.random_range(0..4);
            let ext = ["", "jpg", "a", "txt"][rng.random_range(0..4)];
            let id = FileId::new("g1", rng.random_range(0..3), 7, 1000, i, 5, unique, ext).unwrap();
            map.insert(id, entry(i, i as u32 * 3, i + 100));
        }
        let mut want: Vec<FileSummary> = map
            .iter()
            .map(|(id, e)| FileSummary {
                file_id: id.to_string(),
                size: e.size,
                crc32: e.crc32,
                version: e.version,
            })
            .collect();
        want.sort_by(|a, b| a.file_id.cmp(&b.file_id));
        for limit in [0, 1, 7, 100, 599, 600, 601, 50_000] {
            assert_eq!(page_all(&map, limit), want, "limit {limit}");
        }
        // Arbitrary cursors, ids or not: strictly after, in order.
        for after in [
            "",
            "g0",
            "g1/M01",
            "g1/M01/00/02/",
            want[300].file_id.as_str(),
            want[599].file_id.as_str(),
            "h",
        ] {
            let (page, done) = select_page(map.iter(), after, 10_000);
            let expect: Vec<FileSummary> = want
                .iter()
                .filter(|f| f.file_id.as_str() > after)
                .cloned()
                .collect();
            assert_eq!(page, expect, "after {after:?}");
            assert!(done);
            let (page, done) = select_page(map.iter(), after, 3);
            assert_eq!(page, expect[..expect.len().min(3)], "after {after:?}");
            assert_eq!(done, expect.len() <= 3, "after {after:?}");
        }
        // The page size is capped.
        let mut big = HashMap::new();
        for i in 0..(MAX_LIST_PAGE as u64 + 5) {
            let id = FileId::new("g1", 0, 1, 2, i, 4, i * 7919, "").unwrap();
            big.insert(id, entry(i, 0, i));
        }
        let (page, done) = select_page(big.iter(), "", usize::MAX);
        assert_eq!(page.len(), MAX_LIST_PAGE);
        assert!(!done);
        let (rest, done) = select_page(big.iter(), &page[MAX_LIST_PAGE - 1].file_id, 100);
        assert_eq!(rest.len(), 5);
        assert!(done);
    }

    #[test]
    fn a_full_page_of_the_longest_ids_fits_in_a_frame() {
        let group = "g".repeat(proto::file_id::MAX_GROUP_LEN);
        let ext = "e".repeat(proto::file_id::MAX_EXT_LEN);
        let mut map = HashMap::new();
        for i in 0..(MAX_LIST_PAGE as u64 + 10) {
            let id = FileId::new(&group, 0xFF, u32::MAX, u32::MAX, i, 4, i * 7919, &ext).unwrap();
            map.insert(id, entry(u64::MAX, u32::MAX, u64::MAX));
        }
        let (page, done) = select_page(map.iter(), "", MAX_LIST_PAGE);
        assert!(!done);
        let n = page.len();
        assert!(n > 8000, "{n} files");
        let msg = proto::Message::Response(proto::ResponseEnvelope {
            id: u64::MAX,
            result: Ok(proto::Reply::Files {
                files: page,
                data_version: u64::MAX,
                done,
            }),
        });
        let bytes = proto::frame::encode(&msg).unwrap();
        // ENTRY_OVERHEAD is an upper bound, so the budget holds.
        assert!(bytes.len() <= PAGE_BYTES + 1024, "{} bytes", bytes.len());
        assert!(PAGE_BYTES + 1024 < proto::frame::DEFAULT_MAX_META as usize);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn engine_lists_its_files_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(config(dir.path(), 2)).unwrap();
        let (page, done) = e.list_files("", 10);
        assert!(page.is_empty() && done, "an empty engine lists nothing");

        let mut want = Vec::new();
        for i in 0..40usize {
            let data = pattern(i * 37, i as u8);
            let st = e
                .upload(
                    data.len() as u64,
                    if i % 2 == 0 { "bin" } else { "" },
                    vec![MetaEntry::new("k", "v")],
                    i % 3 == 0,
                    &mut VecBody::new(&data),
                )
                .await
                .unwrap();
            want.push(FileSummary {
                file_id: st.file_id,
                size: st.size,
                crc32: crc32fast::hash(&data),
                version: st.version,
            });
        }
        // A change and a deletion show in the listing.
        let changed = FileId::parse(&want[6].file_id).unwrap();
        let st = e
            .append(&changed, 3, None, &mut VecBody::new(b"xyz"))
            .await
            .unwrap();
        want[6].size = st.size;
        want[6].crc32 = st.crc32;
        want[6].version = st.version;
        let gone = FileId::parse(&want[8].file_id).unwrap();
        e.delete(&gone, None).await.unwrap();
        want.remove(8);
        want.sort_by(|a, b| a.file_id.cmp(&b.file_id));

        let mut got = Vec::new();
        let mut after = String::new();
        let mut pages = 0;
        loop {
            let (page, done) = e.list_files(&after, 6);
            pages += 1;
            assert!(page.len() <= 6);
            if let Some(last) = page.last() {
                after = last.file_id.clone();
            }
            got.extend(page);
            if done {
                break;
            }
            assert!(pages < 20, "listing did not end");
        }
        assert_eq!(got, want);
        assert_eq!(pages, want.len().div_ceil(6));
        e.shutdown().await.unwrap();
    }
}

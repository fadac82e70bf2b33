//! The one suite every [`Store`] passes: the memory store, the fs store (and later S3).

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use robusto::fingerprint::Md5;
use robusto::protocol::{Checksum, ChecksumAlgorithm, ChecksumHasher};
use robusto::serve::digest::RunningDigest;
use robusto::serve::store::fs::FsStore;
use robusto::serve::store::memory::MemoryStore;
use robusto::serve::store::{Append, BodyError, BodyStream, Continuation, Store, StoreError, UploadInfo, UploadState};
use robusto::serve::uploads::new_id;

fn body(parts: &[&'static [u8]], end: Option<BodyError>) -> BodyStream {
    let mut items: Vec<Result<Bytes, BodyError>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
    if let Some(e) = end {
        items.push(Err(e));
    }
    futures_util::stream::iter(items).boxed()
}

fn append(offset: u64, max_len: u64, checksum: Option<&[u8]>) -> Append {
    Append {
        offset,
        max_len,
        checksum: checksum.map(|b| Checksum::md5(Md5::of(b))),
        running: None,
        expires: Some(42),
        yielding: false,
        complete_at: None,
        keep_prefix: false,
        continues: None,
        saved_digest: None,
    }
}

/// An append of the checked chunk `whole` that holds what arrives if it is cut off, continuing
/// `continues` held bytes.
fn holding(offset: u64, whole: &[u8], continues: Option<(u64, Option<ChecksumHasher>)>) -> Append {
    let mut a = append(offset, whole.len() as u64, Some(whole));
    a.keep_prefix = true;
    a.continues = continues.map(|(len, hasher)| Continuation { len, hasher });
    a
}

async fn read_all(store: &dyn Store, id: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = store.read(id, range).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

async fn new_upload(store: &dyn Store, length: u64) -> String {
    let id = new_id();
    store
        .create(UploadInfo::new(id.clone(), Some(length), 1))
        .await
        .unwrap();
    id
}

/// Creation, info, and what a store says of ids it does not have.
async fn creates_and_reads_info(s: &dyn Store) {
    let id = new_upload(s, 10).await;
    assert!(matches!(
        s.create(UploadInfo::new(id.clone(), Some(1), 1)).await,
        Err(StoreError::Exists)
    ));
    let info = s.info(&id).await.unwrap();
    assert_eq!(
        (info.offset, info.length, info.state),
        (0, Some(10), UploadState::Receiving)
    );
    assert!(matches!(s.info(&new_id()).await, Err(StoreError::NotFound)));
    assert!(matches!(s.info("../etc").await, Err(StoreError::NotFound)));
}

/// A whole matching chunk is committed, and its bytes go to the running digest.
async fn commits_whole_matching_chunks(s: &dyn Store) {
    let id = new_upload(s, 10).await;
    let mut a = append(0, 10, Some(b"hello"));
    let mut digest = RunningDigest::start(ChecksumAlgorithm::Md5);
    a.running = Some(digest.feed());
    let done = s.append(&id, a, body(&[b"he", b"llo"], None)).await.unwrap();
    assert_eq!(done.info.offset, 5);
    assert_eq!(done.info.expires, Some(42));
    digest.commit(done.info.offset).await;
    assert_eq!(digest.finish().await.unwrap(), Md5::of(b"hello").0.to_vec());
    assert_eq!(read_all(s, &id, 0..5).await, b"hello");
}

/// A wrong offset, a mismatch, a checked chunk cut off, a body too long: nothing moves.
async fn refuses_bad_appends(s: &dyn Store) {
    let id = new_upload(s, 10).await;
    s.append(&id, append(0, 10, Some(b"hello")), body(&[b"hello"], None))
        .await
        .unwrap();
    assert!(matches!(
        s.append(&id, append(4, 5, None), body(&[b"x"], None)).await,
        Err(StoreError::OffsetMismatch { expected: 4, actual: 5 })
    ));
    assert!(matches!(
        s.append(&id, append(5, 5, Some(b"world")), body(&[b"wor", b"ms"], None))
            .await,
        Err(StoreError::ChecksumMismatch { .. })
    ));
    let cut = Some(BodyError::Interrupted("gone".into()));
    assert!(matches!(
        s.append(&id, append(5, 5, Some(b"world")), body(&[b"wor"], cut)).await,
        Err(StoreError::Body(_))
    ));
    assert!(matches!(
        s.append(&id, append(5, 5, None), body(&[b"world!"], None)).await,
        Err(StoreError::Body(BodyError::TooLong))
    ));
    assert_eq!(s.info(&id).await.unwrap().offset, 5);
    assert_eq!(read_all(s, &id, 0..10).await, b"hello");
}

/// A body without checksum that is cut off keeps what arrived (tus default); reads take ranges.
async fn keeps_what_arrived_of_an_unchecked_body(s: &dyn Store) {
    let id = new_upload(s, 10).await;
    let cut = Some(BodyError::Interrupted("gone".into()));
    let done = s
        .append(&id, append(0, 10, None), body(&[b"hellowo"], cut))
        .await
        .unwrap();
    assert_eq!(done.info.offset, 7);
    assert!(done.interrupted.is_some());
    let done = s.append(&id, append(7, 3, None), body(&[b"rld"], None)).await.unwrap();
    assert!(done.info.is_full());
    assert_eq!(read_all(s, &id, 0..10).await, b"helloworld");
    assert_eq!(read_all(s, &id, 3..6).await, b"low");
}

/// update keeps the offset; publish names the upload and suffixes collisions.
async fn updates_and_publishes(s: &dyn Store) {
    let id = new_upload(s, 2).await;
    s.append(&id, append(0, 2, None), body(&[b"hw"], None)).await.unwrap();
    let mut info = s.info(&id).await.unwrap();
    info.offset = 0;
    info.state = UploadState::Complete;
    s.update(info).await.unwrap();
    let info = s.info(&id).await.unwrap();
    assert_eq!((info.offset, info.state), (2, UploadState::Complete));
    assert_eq!(s.publish(&id, "hw.txt").await.unwrap(), "hw.txt");
    let other = new_upload(s, 0).await;
    assert_eq!(s.publish(&other, "hw.txt").await.unwrap(), "hw-1.txt");
    assert_eq!(s.info(&other).await.unwrap().published.as_deref(), Some("hw-1.txt"));
    assert_eq!(read_all(s, &id, 0..2).await, b"hw");
}

/// A final upload of complete parts holds them in order (one may appear twice), and its
/// bytes went to the digest.
async fn concatenates_parts_in_order(s: &dyn Store) {
    let p1 = new_upload(s, 3).await;
    s.append(&p1, append(0, 3, None), body(&[b"abc"], None)).await.unwrap();
    let p2 = new_upload(s, 10).await;
    s.append(&p2, append(0, 10, None), body(&[b"helloworld"], None))
        .await
        .unwrap();
    let mut digest = RunningDigest::start(ChecksumAlgorithm::Md5);
    let fin = s
        .concatenate(
            UploadInfo::new(new_id(), None, 1),
            &[p1.clone(), p2.clone(), p1.clone()],
            Some(digest.feed()),
        )
        .await
        .unwrap();
    assert_eq!((fin.offset, fin.length), (16, Some(16)));
    assert_eq!(read_all(s, &fin.id, 0..16).await, b"abchelloworldabc");
    digest.commit(fin.offset).await;
    assert_eq!(digest.finish().await.unwrap(), Md5::of(b"abchelloworldabc").0.to_vec());
}

/// Expire frees bytes and keeps the record; delete removes it; list names every upload.
async fn expires_deletes_and_lists(s: &dyn Store) {
    let kept = new_upload(s, 1).await;
    let e = new_upload(s, 5).await;
    s.append(&e, append(0, 5, None), body(&[b"ab"], None)).await.unwrap();
    s.expire(&e).await.unwrap();
    assert_eq!(s.info(&e).await.unwrap().state, UploadState::Expired);
    let gone = new_upload(s, 1).await;
    let mut ids = s.list().await.unwrap();
    ids.sort();
    let mut want = vec![kept.clone(), e.clone(), gone.clone()];
    want.sort();
    assert_eq!(ids, want);
    s.delete(&gone).await.unwrap();
    assert!(matches!(s.info(&gone).await, Err(StoreError::NotFound)));
    assert!(matches!(s.delete(&gone).await, Err(StoreError::NotFound)));
    assert_eq!(s.list().await.unwrap().len(), 2);
}

/// A final upload created before its parts are complete: a part without bytes may be written
/// straight into it, one with bytes is copied in at the end; either way the final holds the
/// parts in order, and each part reads back as its own bytes. A part keeps its first final.
async fn links_parts_of_an_unfinished_final(s: &dyn Store) {
    let q1 = new_upload(s, 4).await;
    let q2 = new_upload(s, 3).await;
    s.append(&q2, append(0, 3, None), body(&[b"xy"], None)).await.unwrap();
    let mut early = UploadInfo::new(new_id(), Some(7), 1);
    early.concat = Some(robusto::protocol::Concat::Final(vec![
        format!("/files/{q1}"),
        format!("/files/{q2}"),
    ]));
    s.create(early.clone()).await.unwrap();
    let linked = s.link(&q1, &early.id, 0).await.unwrap();
    assert_eq!(linked.final_upload.as_deref(), Some(early.id.as_str()));
    let linked = s.link(&q2, &early.id, 4).await.unwrap();
    assert_eq!(
        (linked.final_upload.as_deref(), linked.placed_at),
        (Some(early.id.as_str()), None)
    );
    s.append(&q1, append(0, 4, None), body(&[b"12", b"34"], None))
        .await
        .unwrap();
    s.append(&q2, append(2, 1, None), body(&[b"z"], None)).await.unwrap();
    assert_eq!(read_all(s, &q1, 0..4).await, b"1234");
    assert_eq!(read_all(s, &q1, 1..3).await, b"23");
    assert_eq!(read_all(s, &q2, 0..3).await, b"xyz");
    let fin = s
        .concatenate(early.clone(), &[q1.clone(), q2.clone()], None)
        .await
        .unwrap();
    assert_eq!((fin.offset, fin.length), (7, Some(7)));
    assert_eq!(read_all(s, &early.id, 0..7).await, b"1234xyz");
    let once: Vec<Bytes> = s.read_once(&early.id, 2..6).await.unwrap().try_collect().await.unwrap();
    assert_eq!(once.concat(), b"34xy");
    let again = s.link(&q1, &new_id(), 0).await.unwrap();
    assert_eq!(again.final_upload.as_deref(), Some(early.id.as_str()));
}

/// A checked chunk cut off is held past the offset (never counted or read back), continued
/// with or without its digest state, and committed only whole and matching; a mismatch or a
/// chunk sent anew discards it.
async fn holds_cut_chunks(s: &dyn Store) {
    let whole: &[u8] = b"helloworld";
    let cut = || Some(BodyError::Interrupted("gone".into()));
    let h = new_upload(s, 10).await;
    let held = s
        .append(&h, holding(0, whole, None), body(&[b"hel"], cut()))
        .await
        .unwrap();
    assert_eq!(held.info.offset, 0);
    assert_eq!(held.info.held.as_ref().map(|p| p.len), Some(3));
    assert_eq!(
        held.info.held.as_ref().map(|p| p.checksum.clone()),
        Some(Checksum::md5(Md5::of(whole)).to_header())
    );
    assert!(held.held.is_some() && held.interrupted.is_some());
    assert_eq!(s.info(&h).await.unwrap().held, held.info.held, "held durably");
    assert_eq!(read_all(s, &h, 0..10).await, b"", "held bytes are never read back");
    // update() leaves the held bytes alone.
    let mut info = s.info(&h).await.unwrap();
    info.held = None;
    s.update(info).await.unwrap();
    assert_eq!(s.info(&h).await.unwrap().held.map(|p| p.len), Some(3));

    // Continuing another length is refused and changes nothing.
    assert!(matches!(
        s.append(&h, holding(0, whole, Some((2, None))), body(&[b"lloworld"], None))
            .await,
        Err(StoreError::PrefixMismatch { held: 3, continues: 2 })
    ));
    // Continued without the digest state (the store hashes the held bytes again) and cut
    // again: the held bytes grow.
    let held = s
        .append(&h, holding(0, whole, Some((3, None))), body(&[b"lo"], cut()))
        .await
        .unwrap();
    assert_eq!((held.info.offset, held.info.held.map(|p| p.len)), (0, Some(5)));
    // Completed from the kept digest state: committed whole; only the body goes to the digest.
    let mut a = holding(0, whole, Some((5, held.held)));
    let mut digest = RunningDigest::start(ChecksumAlgorithm::Md5);
    a.running = Some(digest.feed());
    let done = s.append(&h, a, body(&[b"wor", b"ld"], None)).await.unwrap();
    assert_eq!((done.info.offset, done.info.held), (10, None));
    assert_eq!(read_all(s, &h, 0..10).await, whole);
    digest.commit(5).await;
    assert_eq!(digest.finish().await.unwrap(), Md5::of(b"world").0.to_vec());

    // Held bytes that do not complete to the checksum: 460, and they are gone.
    let g = new_upload(s, 10).await;
    s.append(&g, holding(0, whole, None), body(&[b"heXlo"], cut()))
        .await
        .unwrap();
    assert!(matches!(
        s.append(&g, holding(0, whole, Some((5, None))), body(&[b"world"], None))
            .await,
        Err(StoreError::ChecksumMismatch { .. })
    ));
    let info = s.info(&g).await.unwrap();
    assert_eq!((info.offset, info.held), (0, None));
    // A chunk sent anew replaces held bytes; nothing arrived is nothing held.
    s.append(&g, holding(0, whole, None), body(&[b"hel"], cut()))
        .await
        .unwrap();
    assert!(matches!(
        s.append(&g, holding(0, whole, None), body(&[], cut())).await,
        Err(StoreError::Body(_))
    ));
    assert_eq!(s.info(&g).await.unwrap().held, None);
    s.append(&g, holding(0, whole, None), body(&[b"hel"], cut()))
        .await
        .unwrap();
    let done = s
        .append(&g, holding(0, whole, None), body(&[whole_static()], None))
        .await
        .unwrap();
    assert_eq!((done.info.offset, done.info.held), (10, None));
    assert_eq!(read_all(s, &g, 0..10).await, whole);
    s.delete(&h).await.unwrap();
    s.delete(&g).await.unwrap();
}

fn whole_static() -> &'static [u8] {
    b"helloworld"
}

#[tokio::test]
async fn fs_store_holds_a_cut_chunk_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let whole: &[u8] = b"0123456789";
    let id = new_upload(&store, 10).await;
    let cut = Some(BodyError::Interrupted("gone".into()));
    store
        .append(&id, holding(0, whole, None), body(&[b"0123"], cut))
        .await
        .unwrap();
    drop(store);
    let reopened = FsStore::open(dir.path()).unwrap();
    let info = reopened.info(&id).await.unwrap();
    assert_eq!((info.offset, info.held.map(|p| p.len)), (0, Some(4)));
    let done = reopened
        .append(&id, holding(0, whole, Some((4, None))), body(&[b"456789"], None))
        .await
        .unwrap();
    assert_eq!(done.info.offset, 10);
    assert_eq!(std::fs::read(dir.path().join("uploads").join(&id)).unwrap(), whole);
}

#[tokio::test]
async fn fs_store_cuts_uncommitted_bytes_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let id = new_upload(&store, 10).await;
    store
        .append(&id, append(0, 10, None), body(&[b"abc"], None))
        .await
        .unwrap();
    // A crash after writing, before the offset was recorded, leaves extra bytes.
    let data = dir.path().join("uploads").join(&id);
    std::fs::write(&data, b"abcGARBAGE").unwrap();
    let reopened = FsStore::open(dir.path()).unwrap();
    assert_eq!(reopened.info(&id).await.unwrap().offset, 3);
    reopened
        .append(&id, append(3, 7, Some(b"defghij")), body(&[b"defghij"], None))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&data).unwrap(), b"abcdefghij");
    assert!(dir.path().join("uploads").join(format!("{id}.info")).exists());
}

/// A fresh store of each kind, and what must live as long as it does.
async fn memory() -> (Box<dyn Store>, Option<tempfile::TempDir>) {
    (Box::new(MemoryStore::new()), None)
}

async fn fs() -> (Box<dyn Store>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    (Box::new(FsStore::open(dir.path()).unwrap()), Some(dir))
}

async fn ceph() -> (Box<dyn Store>, Option<tempfile::TempDir>) {
    (Box::new(crate::s3::Engine::Ceph.store().await), None)
}

async fn moto() -> (Box<dyn Store>, Option<tempfile::TempDir>) {
    (Box::new(crate::s3::Engine::Moto.store().await), None)
}

/// The suite: one test per behaviour and store, each on a fresh store.
macro_rules! suite {
    ($($behaviour:ident),* $(,)?) => {
        suite!(@store memory; $($behaviour),*);
        suite!(@store fs; $($behaviour),*);
        suite!(@store ceph; $($behaviour),*);
        suite!(@store moto; $($behaviour),*);
    };
    (@store $store:ident; $($behaviour:ident),*) => {
        mod $store {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let (store, _keep) = super::$store().await;
                    super::$behaviour(store.as_ref()).await;
                }
            )*
        }
    };
}

suite!(
    creates_and_reads_info,
    commits_whole_matching_chunks,
    refuses_bad_appends,
    holds_cut_chunks,
    keeps_what_arrived_of_an_unchecked_body,
    updates_and_publishes,
    concatenates_parts_in_order,
    expires_deletes_and_lists,
    links_parts_of_an_unfinished_final,
);

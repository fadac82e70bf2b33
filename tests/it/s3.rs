//! The S3 store against real engines: Ceph RGW (a real distributed store) and moto (AWS
//! semantics), both started by `ci/s3-engines.sh` from `.ci/run`. A missing engine fails.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use robusto::fingerprint::Md5;
use robusto::protocol::Checksum;
use robusto::serve::store::s3::{S3Config, S3Store};
use robusto::serve::store::{Append, BodyError, BodyStream, Store, StoreError, UploadInfo, UploadState};
use robusto::serve::uploads::new_id;

/// The engines the tests run on.
#[derive(Clone, Copy, Debug)]
pub enum Engine {
    Ceph,
    Moto,
}

impl Engine {
    fn var(self, what: &str) -> String {
        let name = match self {
            Engine::Ceph => format!("ROBUSTO_TEST_CEPH_{what}"),
            Engine::Moto => format!("ROBUSTO_TEST_MOTO_{what}"),
        };
        std::env::var(&name).unwrap_or_else(|_| {
            panic!("{name} is not set: start the S3 engines with `source ci/s3-engines.sh` (as .ci/run does)")
        })
    }

    /// A config for a fresh prefix of the test bucket, which exists.
    pub async fn config(self) -> S3Config {
        let config = S3Config {
            bucket: "robusto-test".into(),
            endpoint: Some(self.var("ENDPOINT")),
            region: "us-east-1".into(),
            prefix: format!("t-{}/", new_id()),
            path_style: true,
            access_key: self.var("KEY"),
            secret_key: self.var("SECRET"),
            session_token: None,
        };
        S3Store::create_bucket(&config).await.unwrap();
        config
    }

    /// A store on a fresh prefix.
    pub async fn store(self) -> S3Store {
        S3Store::open(&self.config().await).await.unwrap()
    }
}

fn frames(data: &[u8], frame: usize) -> BodyStream {
    let items: Vec<Result<Bytes, BodyError>> = data.chunks(frame).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures_util::stream::iter(items).boxed()
}

fn checked(offset: u64, chunk: &[u8], max_len: u64) -> Append {
    Append {
        offset,
        max_len,
        checksum: Some(Checksum::md5(Md5::of(chunk))),
        running: None,
        expires: Some(u64::MAX / 2),
        yielding: false,
        complete_at: None,
        keep_prefix: true,
        continues: None,
        saved_digest: None,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn read_all(s: &dyn Store, id: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = s.read(id, range).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

/// 20 MiB in 1 MiB checked chunks: parts of 8 MiB are assembled from the pending chunks, the
/// last part is the rest; the published object is the bytes, under the name, and the carried
/// MD5 state is the file's MD5.
async fn parts_from_small_chunks(engine: Engine) {
    let s = engine.store().await;
    let data = pattern(20 << 20, 7);
    let id = new_id();
    let mut info = UploadInfo::new(id.clone(), Some(data.len() as u64), 1);
    info.metadata = Some(format!("filename {}", base64_of("night.tar")));
    s.create(info).await.unwrap();
    let mut offset = 0u64;
    for chunk in data.chunks(1 << 20) {
        let a = checked(offset, chunk, data.len() as u64 - offset);
        let done = s.append(&id, a, frames(chunk, 64 << 10)).await.unwrap();
        offset = done.info.offset;
    }
    let info = s.info(&id).await.unwrap();
    assert!(info.is_full());
    let state = robusto::serve::digest::WholeMd5::resume(info.whole_md5.as_deref()).unwrap();
    assert_eq!(state.finish(), Md5::of(&data).0.to_vec());
    assert_eq!(s.publish(&id, "night.tar").await.unwrap(), "night.tar");
    assert_eq!(read_all(&s, &id, 0..data.len() as u64).await, data);
    assert_eq!(
        read_all(&s, &id, (9 << 20) - 3..(9 << 20) + 5).await,
        &data[(9 << 20) - 3..(9 << 20) + 5]
    );
    // The same name again gets a suffix; nothing is overwritten.
    let other = new_id();
    let mut info = UploadInfo::new(other.clone(), Some(3), 1);
    info.metadata = Some(format!("filename {}", base64_of("night.tar")));
    s.create(info).await.unwrap();
    let a = checked(0, b"abc", 3);
    s.append(&other, a, frames(b"abc", 3)).await.unwrap();
    assert_eq!(s.publish(&other, "night.tar").await.unwrap(), "night-1.tar");
    assert_eq!(read_all(&s, &id, 0..4).await, &data[..4]);
    s.delete(&id).await.unwrap();
    assert!(matches!(s.info(&id).await, Err(StoreError::NotFound)));
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Two stores (two nodes) on one prefix race a chunk at the same offset, 20 times: exactly one
/// is counted each time, and the bytes read back are the winner's.
async fn racing_appends(engine: Engine) {
    let config = engine.config().await;
    let a = Arc::new(S3Store::open(&config).await.unwrap());
    let b = Arc::new(S3Store::open(&config).await.unwrap());
    let id = new_id();
    let total = 20u64 * 1000;
    a.create(UploadInfo::new(id.clone(), Some(total), 1)).await.unwrap();
    let mut expected = Vec::new();
    for round in 0..20u64 {
        let offset = round * 1000;
        let ca = pattern(1000, round as u8);
        let cb = pattern(1000, round as u8 ^ 0x55);
        let (ra, rb) = tokio::join!(
            a.append(&id, checked(offset, &ca, total - offset), frames(&ca, 100)),
            b.append(&id, checked(offset, &cb, total - offset), frames(&cb, 100)),
        );
        let lost =
            |r: &Result<_, StoreError>| matches!(r, Err(StoreError::Conflict | StoreError::OffsetMismatch { .. }));
        match (&ra, &rb) {
            (Ok(_), r) if lost(r) => expected.extend_from_slice(&ca),
            (r, Ok(_)) if lost(r) => expected.extend_from_slice(&cb),
            _ => panic!(
                "round {round}: exactly one must win: {:?} / {:?}",
                ra.as_ref().err(),
                rb.as_ref().err()
            ),
        }
        assert_eq!(a.info(&id).await.unwrap().offset, offset + 1000);
    }
    assert_eq!(read_all(a.as_ref(), &id, 0..total).await, expected);
    let info = b.info(&id).await.unwrap();
    let state = robusto::serve::digest::WholeMd5::resume(info.whole_md5.as_deref()).unwrap();
    assert_eq!(state.finish(), Md5::of(&expected).0.to_vec());

    // Chunks of a whole part each: a racer may upload a part under a number of its own before
    // it loses; the published object holds the winners' bytes only.
    let id = new_id();
    let part = 8usize << 20;
    let total = 2 * part as u64;
    a.create(UploadInfo::new(id.clone(), Some(total), 1)).await.unwrap();
    let mut expected = Vec::new();
    for round in 0..2u64 {
        let offset = round * part as u64;
        let (ca, cb) = (pattern(part, 2 * round as u8 + 1), pattern(part, 2 * round as u8 + 2));
        let (ra, rb) = tokio::join!(
            a.append(&id, checked(offset, &ca, total - offset), frames(&ca, 1 << 20)),
            b.append(&id, checked(offset, &cb, total - offset), frames(&cb, 1 << 20)),
        );
        match (&ra, &rb) {
            (Ok(_), Err(StoreError::Conflict | StoreError::OffsetMismatch { .. })) => expected.extend_from_slice(&ca),
            (Err(StoreError::Conflict | StoreError::OffsetMismatch { .. }), Ok(_)) => expected.extend_from_slice(&cb),
            _ => panic!("part round {round}: {:?} / {:?}", ra.as_ref().err(), rb.as_ref().err()),
        }
    }
    assert_eq!(b.publish(&id, "raced.bin").await.unwrap(), "raced.bin");
    assert_eq!(Md5::of(&read_all(a.as_ref(), &id, 0..total).await), Md5::of(&expected));
}

/// Expiry aborts the multipart upload and removes what is pending; the record answers expired.
async fn expiry_frees_everything(engine: Engine) {
    let s = engine.store().await;
    let id = new_id();
    let data = pattern(9 << 20, 3);
    s.create(UploadInfo::new(id.clone(), Some(20 << 20), 1)).await.unwrap();
    let a = checked(0, &data, 20 << 20);
    s.append(&id, a, frames(&data, 1 << 20)).await.unwrap();
    s.expire(&id).await.unwrap();
    let info = s.info(&id).await.unwrap();
    assert_eq!((info.state, info.offset), (UploadState::Expired, 9 << 20));
    assert!(matches!(s.expire(&id).await, Ok(())));
}

#[tokio::test]
async fn s3_parts_from_small_chunks_on_ceph() {
    parts_from_small_chunks(Engine::Ceph).await;
}

#[tokio::test]
async fn s3_parts_from_small_chunks_on_moto() {
    parts_from_small_chunks(Engine::Moto).await;
}

#[tokio::test]
async fn s3_racing_appends_on_ceph() {
    racing_appends(Engine::Ceph).await;
}

#[tokio::test]
async fn s3_racing_appends_on_moto() {
    racing_appends(Engine::Moto).await;
}

#[tokio::test]
async fn s3_expiry_on_ceph() {
    expiry_frees_everything(Engine::Ceph).await;
}

#[tokio::test]
async fn s3_expiry_on_moto() {
    expiry_frees_everything(Engine::Moto).await;
}

/// A node that dies after uploading a part and before writing the record that counts it (its
/// record write never reaches S3): the part counts for nothing, the offset stays, and the chunk
/// sent again (other bytes) is what the upload holds.
async fn a_part_written_but_not_recorded_counts_for_nothing(engine: Engine) {
    use std::sync::Mutex;
    let mut config = engine.config().await;
    let upstream: std::net::SocketAddr = config
        .endpoint
        .as_deref()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    // Some(n): let n record writes pass, cut the next one, then let everything pass.
    let plan: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));
    let p = plan.clone();
    let rule: crate::relay::DropRule = Arc::new(move |head: &str| {
        let record_write = head.starts_with("put ") && head.contains(".json") && head.contains("if-match:");
        let mut plan = p.lock().unwrap();
        match plan.as_mut() {
            Some(0) if record_write => {
                *plan = None;
                true
            }
            Some(n) if record_write => {
                *n -= 1;
                false
            }
            _ => false,
        }
    });
    let relay = crate::relay::RoundRobin::start(vec![upstream], Some(rule)).await;
    config.endpoint = Some(relay.url());
    let s = S3Store::open(&config).await.unwrap();
    let part = 8usize << 20;
    let total = 2 * part as u64;
    let id = new_id();
    s.create(UploadInfo::new(id.clone(), Some(total), 1)).await.unwrap();
    let c1 = pattern(part, 1);
    s.append(&id, checked(0, &c1, total), frames(&c1, 1 << 20))
        .await
        .unwrap();
    // The next chunk: its part-number write passes, its part is uploaded, its record is cut.
    *plan.lock().unwrap() = Some(1);
    let c2 = pattern(part, 2);
    let cut = s
        .append(
            &id,
            checked(part as u64, &c2, total - part as u64),
            frames(&c2, 1 << 20),
        )
        .await;
    assert!(matches!(cut, Err(StoreError::Conflict)), "{:?}", cut.err());
    assert_eq!(relay.dropped.load(std::sync::atomic::Ordering::SeqCst), 1);
    let info = s.info(&id).await.unwrap();
    assert_eq!((info.offset, info.state), (part as u64, UploadState::Receiving));
    let c3 = pattern(part, 3);
    let done = s
        .append(
            &id,
            checked(part as u64, &c3, total - part as u64),
            frames(&c3, 1 << 20),
        )
        .await
        .unwrap();
    assert!(done.info.is_full());
    s.publish(&id, "x").await.unwrap();
    let mut expected = c1;
    expected.extend_from_slice(&c3);
    assert_eq!(Md5::of(&read_all(&s, &id, 0..total).await), Md5::of(&expected));
}

#[tokio::test]
async fn s3_a_part_not_recorded_counts_for_nothing_on_ceph() {
    a_part_written_but_not_recorded_counts_for_nothing(Engine::Ceph).await;
}

#[tokio::test]
async fn s3_a_part_not_recorded_counts_for_nothing_on_moto() {
    a_part_written_but_not_recorded_counts_for_nothing(Engine::Moto).await;
}

/// A final upload created before its parts: parts without bytes write straight into its
/// multipart upload (in their blocks of part numbers), a part that had bytes is copied into
/// its block at the end; the final holds the parts in order and its carried MD5 is theirs.
async fn parts_placed_in_an_unfinished_final(engine: Engine) {
    let s = engine.store().await;
    let mib = 1usize << 20;
    let lens = [12 * mib, 9 * mib, 10 * mib, 3 * mib];
    let datas: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| pattern(l, 40 + i as u8))
        .collect();
    let mut ids = Vec::new();
    for &len in &lens {
        let id = new_id();
        let mut info = UploadInfo::new(id.clone(), Some(len as u64), 1);
        info.concat = Some(robusto::protocol::Concat::Partial);
        s.create(info).await.unwrap();
        ids.push(id);
    }
    // The second part has bytes before the final exists: it is copied in at the end.
    let early = &datas[1][..2 * mib];
    s.append(&ids[1], checked(0, early, lens[1] as u64), frames(early, mib))
        .await
        .unwrap();
    let total: u64 = lens.iter().map(|&l| l as u64).sum();
    let fin = new_id();
    let mut info = UploadInfo::new(fin.clone(), Some(total), 1);
    info.concat = Some(robusto::protocol::Concat::Final(
        ids.iter().map(|i| format!("/files/{i}")).collect(),
    ));
    s.create(info.clone()).await.unwrap();
    let mut base = 0u64;
    let mut placed = 0;
    for (id, &len) in ids.iter().zip(&lens) {
        let linked = s.link(id, &fin, base).await.unwrap();
        placed += usize::from(linked.placed_at.is_some());
        base += len as u64;
    }
    assert_eq!(placed, 3, "the parts without bytes are placed");
    // Parts arrive in any order, in 1 MiB chunks, the last one of each completing it.
    for i in [3usize, 0, 2, 1] {
        let data = &datas[i];
        let mut offset = s.info(&ids[i]).await.unwrap().offset as usize;
        while offset < data.len() {
            let chunk = &data[offset..(offset + mib).min(data.len())];
            let mut a = checked(offset as u64, chunk, (data.len() - offset) as u64);
            a.complete_at = Some(2);
            let done = s.append(&ids[i], a, frames(chunk, 256 << 10)).await.unwrap();
            offset = done.info.offset as usize;
        }
        assert_eq!(s.info(&ids[i]).await.unwrap().state, UploadState::Complete);
    }
    let done = s.concatenate(info, &ids, None).await.unwrap();
    assert_eq!((done.offset, done.length), (total, Some(total)));
    let expected = datas.concat();
    let state = robusto::serve::digest::WholeMd5::resume(done.whole_md5.as_deref()).unwrap();
    assert_eq!(state.finish(), Md5::of(&expected).0.to_vec());
    assert_eq!(s.publish(&fin, "parallel.bin").await.unwrap(), "parallel.bin");
    assert_eq!(Md5::of(&read_all(&s, &fin, 0..total).await), Md5::of(&expected));
}

#[tokio::test]
async fn s3_parts_placed_in_an_unfinished_final_on_ceph() {
    parts_placed_in_an_unfinished_final(Engine::Ceph).await;
}

#[tokio::test]
async fn s3_parts_placed_in_an_unfinished_final_on_moto() {
    parts_placed_in_an_unfinished_final(Engine::Moto).await;
}

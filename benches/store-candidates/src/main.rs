//! The broker's store workload against fjall, redb and a bare append log (the floor).
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

const PAYLOAD: usize = 100; // a 64 B message plus topic, ids and flags

fn key(session: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&session.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

trait Store {
    fn write(&mut self, puts: &[([u8; 12], Vec<u8>)], dels: &[[u8; 12]]);
    fn scan(&self) -> usize;
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}
impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir).worker_threads(1).open().unwrap();
        let ks = db.keyspace("q", fjall::KeyspaceCreateOptions::default).unwrap();
        Fjall { db, ks }
    }
}
impl Store for Fjall {
    fn write(&mut self, puts: &[([u8; 12], Vec<u8>)], dels: &[[u8; 12]]) {
        let mut b = self.db.batch();
        for (k, v) in puts {
            b.insert(&self.ks, k.to_vec(), v.clone());
        }
        for k in dels {
            b.remove(&self.ks, k.to_vec());
        }
        b.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncData).unwrap();
    }
    fn scan(&self) -> usize {
        self.ks.iter().count()
    }
}

const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("q");
struct Redb {
    db: redb::Database,
}
impl Redb {
    fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        Redb { db: redb::Database::create(dir.join("db.redb")).unwrap() }
    }
}
impl Store for Redb {
    fn write(&mut self, puts: &[([u8; 12], Vec<u8>)], dels: &[[u8; 12]]) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for (k, v) in puts {
                t.insert(&k[..], &v[..]).unwrap();
            }
            for k in dels {
                t.remove(&k[..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn scan(&self) -> usize {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        let _ = t.len();
        t.range::<&[u8]>(..).unwrap().count()
    }
}

/// The floor: one file, length-prefixed records, fdatasync per batch; no index, no compaction.
struct Log {
    file: File,
    path: std::path::PathBuf,
}
impl Log {
    fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("log");
        let file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        Log { file, path }
    }
}
impl Store for Log {
    fn write(&mut self, puts: &[([u8; 12], Vec<u8>)], dels: &[[u8; 12]]) {
        let mut buf = Vec::with_capacity(puts.len() * 120 + dels.len() * 16);
        for (k, v) in puts {
            buf.extend_from_slice(&((k.len() + v.len()) as u32).to_le_bytes());
            buf.extend_from_slice(k);
            buf.extend_from_slice(v);
        }
        for k in dels {
            buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            buf.extend_from_slice(k);
        }
        self.file.write_all(&buf).unwrap();
        self.file.sync_data().unwrap();
    }
    fn scan(&self) -> usize {
        let data = std::fs::read(&self.path).unwrap();
        let (mut i, mut n) = (0, 0);
        while i + 4 <= data.len() {
            let l = u32::from_le_bytes(data[i..i + 4].try_into().unwrap()) as usize;
            i += 4 + l;
            n += 1;
        }
        n
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    total
}

fn run(name: &str, open: &dyn Fn(&Path) -> Box<dyn Store>, batch: usize, n: u64) {
    let dir = Path::new("target/store-candidates").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let payload = vec![7u8; PAYLOAD];
    // 1. Steady state: append a batch, delete (acknowledge) the batch appended 8 batches ago.
    let mut store = open(&dir);
    let start = Instant::now();
    let mut seq = 0u64;
    let mut commits = 0;
    while seq < n {
        let puts: Vec<_> =
            (seq..seq + batch as u64).map(|s| (key((s % 64) as u32, s), payload.clone())).collect();
        let lag = 8 * batch as u64;
        let dels: Vec<_> = if seq >= lag {
            (seq - lag..seq - lag + batch as u64).map(|s| key((s % 64) as u32, s)).collect()
        } else {
            vec![]
        };
        store.write(&puts, &dels);
        seq += batch as u64;
        commits += 1;
    }
    let steady = start.elapsed();
    let steady_size = dir_size(&dir);
    drop(store);
    // 2. Backlog: 1M messages nobody acknowledges (an offline subscriber), in batches of 1024.
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = open(&dir);
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < 1_000_000 {
        let puts: Vec<_> =
            (seq..seq + 1024).map(|s| (key((s % 64) as u32, s), payload.clone())).collect();
        store.write(&puts, &[]);
        seq += 1024;
    }
    let backlog = start.elapsed();
    drop(store);
    let backlog_size = dir_size(&dir);
    // 3. Recover: open and read everything in order.
    let start = Instant::now();
    let store = open(&dir);
    let count = store.scan();
    let recover = start.elapsed();
    println!(
        "{name:6} batch {batch:4}: steady {:>9.0} msg/s ({} commits, {:.0} µs/commit), size after {n} put+ack {:>6.1} MB | 1M backlog {:>9.0} msg/s, {:>6.1} MB | recover 1M {:>6.0} ms ({count} read)",
        n as f64 / steady.as_secs_f64(), commits, steady.as_micros() as f64 / commits as f64,
        steady_size as f64 / 1e6, 1e6 / backlog.as_secs_f64(), backlog_size as f64 / 1e6, recover.as_millis()
    );
}

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(200_000, |a| a.parse().unwrap());
    for batch in [1usize, 64, 512] {
        let n = if batch == 1 { n / 20 } else { n };
        run("fjall", &|d| Box::new(Fjall::open(d)), batch, n);
        run("redb", &|d| Box::new(Redb::open(d)), batch, n);
        run("log", &|d| Box::new(Log::open(d)), batch, n);
    }
}

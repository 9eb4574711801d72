//! Group-committed appends on redb and fjall: the workload of hookbridge's embedded log.
//!
//! Each commit appends `batch` records of `size` bytes spread over 8 partitions (one table /
//! keyspace per partition, big-endian offsets as keys) and is durable (fsync) before the
//! next one starts, as the ingress needs before it may answer 202.
//!
//! Run: cargo run --release -- [records] [size]
use std::time::Instant;

const PARTITIONS: usize = 8;

fn redb_run(dir: &std::path::Path, records: usize, size: usize, batch: usize) -> f64 {
    use redb::{Database, Durability, TableDefinition};
    let db = Database::create(dir.join("log.redb")).unwrap();
    let names: Vec<String> = (0..PARTITIONS).map(|p| format!("p{p}")).collect();
    let value = vec![7u8; size];
    let mut next = [0u64; PARTITIONS];
    let start = Instant::now();
    let mut written = 0;
    while written < records {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap();
        for i in 0..batch {
            let p = (written + i) % PARTITIONS;
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&names[p]);
            let mut t = tx.open_table(def).unwrap();
            t.insert(next[p], value.as_slice()).unwrap();
            next[p] += 1;
        }
        tx.commit().unwrap();
        written += batch;
    }
    written as f64 / start.elapsed().as_secs_f64()
}

fn fjall_run(dir: &std::path::Path, records: usize, size: usize, batch: usize) -> f64 {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let db = Database::builder(dir.join("fjall")).open().unwrap();
    let parts: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            db.keyspace(&format!("p{p}"), KeyspaceCreateOptions::default)
                .unwrap()
        })
        .collect();
    let value = vec![7u8; size];
    let mut next = [0u64; PARTITIONS];
    let start = Instant::now();
    let mut written = 0;
    while written < records {
        let mut b = db.batch().durability(Some(PersistMode::SyncAll));
        for i in 0..batch {
            let p = (written + i) % PARTITIONS;
            b.insert(&parts[p], next[p].to_be_bytes(), value.as_slice());
            next[p] += 1;
        }
        b.commit().unwrap();
        written += batch;
    }
    written as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let records = *args.first().unwrap_or(&100_000);
    let size = *args.get(1).unwrap_or(&1024);
    println!("records={records} size={size}B partitions={PARTITIONS}");
    println!("{:>6} {:>14} {:>14}", "batch", "redb rec/s", "fjall rec/s");
    for batch in [1usize, 16, 64, 256] {
        let n = if batch == 1 { records / 20 } else { records };
        let d1 = tempfile::tempdir_in(".").unwrap();
        let r = redb_run(d1.path(), n, size, batch);
        let d2 = tempfile::tempdir_in(".").unwrap();
        let f = fjall_run(d2.path(), n, size, batch);
        println!("{batch:>6} {r:>14.0} {f:>14.0}");
    }
}

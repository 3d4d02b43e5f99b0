//! Hot paths per core: envelope encode/decode and Parquet curation of the
//! 12-column results table. Run: `cargo bench -p lablake-benches`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lablake_benches::results_events;
use lablake_curate::BatchBuilder;
use lablake_model::envelope::{Decoder, encode, encode_key};

fn envelope(c: &mut Criterion) {
    let events = results_events(10_000);
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("encode_10k_results", |b| {
        let mut buf = Vec::with_capacity(2048);
        let mut key = Vec::with_capacity(64);
        b.iter(|| {
            let mut total = 0usize;
            for e in &events {
                buf.clear();
                key.clear();
                encode_key(e, &mut key);
                encode(e, &mut buf);
                total += buf.len() + key.len();
            }
            total
        })
    });
    let encoded: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut b = Vec::new();
            encode(e, &mut b);
            b
        })
        .collect();
    g.bench_function("decode_10k_results", |b| {
        let mut d = Decoder::new();
        b.iter(|| encoded.iter().filter(|x| d.decode(x).is_ok()).count())
    });
    g.finish();
}

fn parquet(c: &mut Criterion) {
    let events = results_events(100_000);
    let schema = events[0].schema.clone();
    let mut g = c.benchmark_group("curate");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("results_100k_to_parquet_zstd", |b| {
        b.iter(|| {
            let mut builder = BatchBuilder::new(schema.clone());
            for (i, e) in events.iter().enumerate() {
                builder.push(e.clone(), 0, i as i64).expect("valid row");
            }
            let batch = builder.finish().expect("batch");
            lablake_lake::encode_parquet(&batch, 3).expect("parquet").len()
        })
    });
    g.finish();
}

criterion_group!(benches, envelope, parquet);
criterion_main!(benches);

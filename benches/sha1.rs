use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha1::{Digest, Sha1};

fn sha1_per_core(c: &mut Criterion) {
    let mut g = c.benchmark_group("sha1");
    for &size in &[16 * 1024usize, 1024 * 1024] {
        let data = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("one_core_{}KiB", size / 1024), |b| {
            b.iter(|| Sha1::digest(std::hint::black_box(&data)))
        });
    }
    g.finish();
}

criterion_group!(benches, sha1_per_core);
criterion_main!(benches);

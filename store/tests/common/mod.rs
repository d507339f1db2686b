//! Helpers shared by the integration tests: deterministic synthetic memory
//! images and checkpoint metadata.
#![allow(dead_code)]

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::{BlobRef, CheckpointMeta, Compression, Store, StoreConfig};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Fill `buf` with a mix of random and compressible bytes.
pub fn fill_chunk(buf: &mut [u8], seed: u64) {
    let mut r = rng(seed);
    let half = buf.len() / 2;
    r.fill(&mut buf[..half]);
    let b: u8 = r.random::<u8>() | 1;
    for (k, x) in buf[half..].iter_mut().enumerate() {
        *x = b.wrapping_add((k / 64) as u8) | 1;
    }
}

/// A memory image of `n` chunks where roughly a quarter are zero.
pub fn image(n: usize, cs: usize, seed: u64) -> Vec<u8> {
    let mut m = vec![0u8; n * cs];
    for (i, c) in m.chunks_mut(cs).enumerate() {
        if !(i as u64 + seed).is_multiple_of(4) {
            fill_chunk(c, seed * 1_000_003 + i as u64);
        }
    }
    m
}

pub fn cfg(cs: u32) -> StoreConfig {
    StoreConfig {
        chunk_size: cs,
        cache_bytes: 64 << 20,
        disk_limit_bytes: u64::MAX,
        disk_compression: Compression::Zstd(1),
        threads: 2,
    }
}

pub fn module_bytes() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend((0..10_000u32).map(|i| (i * 7 % 251) as u8));
    m
}

pub fn meta(store: &Store, job: &str, generation: u64) -> CheckpointMeta {
    let module: BlobRef = store.put_blob(&module_bytes()).unwrap();
    CheckpointMeta {
        job: job.into(),
        generation,
        module,
        globals: generation.to_le_bytes().to_vec(),
        host_state: format!("host state of {job} at {generation}").into_bytes(),
        extra: BTreeMap::new(),
    }
}

//! Writes the output of each instrumentation stage, to inspect it or time it:
//! `cargo run --release -p wasm-host --example instrument_stages -- in.wasm outdir`
//! produces outdir/yield-points.wasm and outdir/asyncified.wasm.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (input, out) = match args.as_slice() {
        [_, i, o] => (i, std::path::PathBuf::from(o)),
        _ => return Err("usage: instrument_stages IN.wasm OUTDIR".into()),
    };
    let bytes = wasm_host::instrument::parse_module_bytes(&std::fs::read(input)?)?;
    std::fs::create_dir_all(&out)?;
    let (yp, stats) = wasm_host::instrument::yield_points_only(&bytes)?;
    std::fs::write(out.join("yield-points.wasm"), &yp)?;
    let full = wasm_host::instrument::instrument(&bytes, &Default::default())?;
    std::fs::write(out.join("asyncified.wasm"), &full.bytes)?;
    println!(
        "{stats:?}; sizes: original {} yield-points {} asyncified {}",
        bytes.len(),
        yp.len(),
        full.bytes.len()
    );
    Ok(())
}

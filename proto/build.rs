//! Compiles `starling/**/*.proto` with protox (pure Rust, so no system protoc is needed) and
//! keeps the encoded descriptor set next to the generated code: server reflection serves it
//! and the mesh reads each method's `idempotency_level` from it to decide what may be retried.

use prost::Message;
use std::path::PathBuf;

const FILES: &[&str] = &[
    "starling/tweet/v1/tweet.proto",
    "starling/follower/v1/follower.proto",
    "starling/timeline/v1/timeline.proto",
    "starling/tagger/v1/tagger.proto",
    "starling/recommendation/v1/recommendation.proto",
    "starling/events/v1/events.proto",
    "starling/auth/v1/auth.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=starling");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::Compiler::new(["."])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(FILES)?
        .file_descriptor_set();
    std::fs::write(out.join("starling_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles the demo contract, `examples/proto/demo.proto`, with a vendored `protoc`, so no
//! system protoc is needed.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("demo_descriptor.bin"))
        .compile_with_config(
            config,
            &["../../examples/proto/demo.proto"],
            &["../../examples/proto"],
        )?;
    Ok(())
}

//! Compiles the envelope schema with a vendored protoc, so a fresh machine needs no
//! protobuf install.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known_types = protoc_bin_vendored::include_path()?;
    println!("cargo:rerun-if-changed=proto");
    prost_build::Config::new()
        .protoc_executable(protoc)
        // `bytes::Bytes` for bytes fields: bodies move from request to record uncopied.
        .bytes(["."])
        .compile_protos(
            &["proto/hookbridge/v1/envelope.proto"],
            &[std::path::PathBuf::from("proto"), well_known_types],
        )?;
    Ok(())
}

//! Compiles the API protos with the vendored protoc (no system protoc needed) and emits the
//! descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY of set_var: build scripts are single-threaded.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("threadwarden_descriptor.bin"))
        .compile_protos(&["proto/threadwarden/v1/moderation.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

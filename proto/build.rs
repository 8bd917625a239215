//! Compiles every `.proto` under `agentregistry/` with protox (pure Rust, no
//! system `protoc`), generates tonic clients and servers, and writes the file
//! descriptor set that the services serve through reflection. That set also
//! holds the googleapis files under `google/` (`google/rpc/status.proto`,
//! `code.proto`, `error_details.proto`, `google/api/field_behavior.proto`,
//! `annotations.proto`, `http.proto`): no code is generated for them (Rust
//! takes them from tonic-types, other languages from their googleapis
//! packages), but reflection clients see them, so grpcurl can decode the
//! rich error details we send, and the `google.api.http` rules on our
//! methods reach REST transcoders (Envoy's grpc_json_transcoder).

use std::path::{Path, PathBuf};

/// The folders whose `.proto` files are compiled: ours, and the googleapis
/// files (served through reflection only; see the file's header).
const FOLDERS: [&str; 2] = ["agentregistry", "google"];

/// Files under these folders get no generated code.
const NOT_GENERATED: [&str; 2] = ["google/rpc/", "google/api/"];

/// Messages that hold a credential, a plaintext or a legacy token: their
/// `Debug` is written by hand in `src/lib.rs`, with the secret redacted.
const SECRET_HOLDERS: [&str; 5] = [
    ".agentregistry.v1.Provider",
    ".agentregistry.v1.ResolvedAgent",
    ".agentregistry.crypto.v1.EncryptRequest",
    ".agentregistry.crypto.v1.DecryptResponse",
    ".agentregistry.crypto.v1.ImportFernetItem",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a build
    // directory copied from another checkout must not compile that
    // checkout's protos.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = proto_root.as_path();
    let mut files = Vec::new();
    for folder in FOLDERS {
        collect_protos(&proto_root.join(folder), &mut files)?;
        // tonic-prost-build prints no rerun-if-changed lines of its own.
        println!("cargo:rerun-if-changed={folder}");
    }
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let mut compiler = protox::Compiler::new([proto_root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // `compile_fds` ignores `file_descriptor_set_path`, so write it ourselves,
    // encoded by protox itself: a `prost_types` set drops extension options
    // (`google.api.http`, `google.api.field_behavior`), which reflection
    // clients and Envoy's JSON transcoder read from these bytes.
    std::fs::write(
        out_dir.join("descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let mut descriptors = compiler.file_descriptor_set();
    // Rust takes the googleapis messages from tonic-types and needs no code
    // for the field_behavior option.
    descriptors.file.retain(|file| {
        !NOT_GENERATED
            .iter()
            .any(|folder| file.name().starts_with(folder))
    });

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(SECRET_HOLDERS)
        // Maps as BTreeMaps: a message then encodes to the same bytes
        // whatever order its map entries were inserted in, which the
        // registry's request fingerprints (AIP-155 retries) rely on.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}

fn collect_protos(dir: &Path, into: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, into)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            into.push(path);
        }
    }
    Ok(())
}

//! Generates the gRPC code from `drd.proto` with protox, a pure-Rust protobuf
//! compiler, so no `protoc` has to be installed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=drd.proto");
    let fds = protox::compile(["drd.proto"], ["."])?;
    // Without the `grpc` feature only the messages are generated (drd-core
    // and drd-sim link no tonic).
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        // Chunk payloads are `bytes::Bytes`: no copy from the frame into the message.
        .bytes(".drd.v1.Chunk.data")
        .compile_fds(fds)?;
    Ok(())
}

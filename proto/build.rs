//! Generates the gRPC code from `drd.proto` with protox, a pure-Rust protobuf
//! compiler, so no `protoc` has to be installed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=drd.proto");
    let fds = protox::compile(["drd.proto"], ["."])?;
    tonic_prost_build::configure()
        // Chunk payloads are `bytes::Bytes`: no copy from the frame into the message.
        .bytes(".drd.v1.Chunk.data")
        .compile_fds(fds)?;
    Ok(())
}

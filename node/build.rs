//! Compiles the test-only fault switches (`node/src/faults.rs`) into this crate
//! only when the builder asks for them with `SYNOD_BUILD_FAULTS=1`.
//!
//! A cargo feature would not do: `cargo build --release --workspace` unifies
//! features across the workspace, so the simulator's need for faults would put
//! them into the release `synod` binary. A `--cfg` set here reaches only this
//! crate, no user sets it by accident, and flipping the variable rebuilds this
//! crate and its dependents but no third-party dependency (as RUSTFLAGS would).

fn main() {
    println!("cargo:rustc-check-cfg=cfg(synod_faults)");
    println!("cargo:rerun-if-env-changed=SYNOD_BUILD_FAULTS");
    match std::env::var("SYNOD_BUILD_FAULTS").as_deref() {
        Ok("1") => println!("cargo:rustc-cfg=synod_faults"),
        Ok("") | Ok("0") | Err(_) => {}
        Ok(other) => {
            panic!("SYNOD_BUILD_FAULTS={other:?} is neither 1 (build the test-only fault switches) nor 0/unset")
        }
    }
}

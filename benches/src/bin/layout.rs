//! Why a key's pane list is a two-variant enum (`window::Panes`: one pane inline, several in a
//! vector) and not `smallvec::SmallVec<[Pane; 1]>`: the bytes each gives a 16-byte pane header
//! (index, two time offsets), and what that does to the key state's allocation.
//!
//! The key state must stay within 56 bytes, which glibc serves from a 64-byte chunk; 57 to 72
//! bytes take an 80-byte chunk, 16 bytes more for each of millions of keys. `SmallVec` is
//! 24 bytes only with its `union` feature; without it (as the rest of the dependency graph
//! builds it) it is 32, and turning `union` on changes smallvec's features for every crate
//! that uses it (datafusion's dependencies among them), rebuilding them all for 8 bytes that
//! the enum gets without a dependency.
//!
//! Run: `cargo run --release -p cordon-benches --bin layout`.

use cordon_engine::agg::Partial;
use cordon_engine::window::KeyState;
use smallvec::SmallVec;
use std::mem::size_of;

/// A pane header as the key state keeps it.
#[derive(Clone, Copy)]
#[allow(dead_code)]
struct Pane {
    idx: i64,
    min_off: u32,
    max_off: u32,
}

/// The engine's representation.
#[allow(dead_code)]
enum Panes {
    One(Pane),
    Many(Vec<Pane>),
}

/// glibc's chunk for a request of `n` bytes (64-bit): 8 bytes of header, 16-byte granules,
/// 32 bytes at least.
fn chunk(n: usize) -> usize {
    (n + 8).div_ceil(16).max(2) * 16
}

fn main() {
    let rest = size_of::<KeyState>() - size_of::<Panes>();
    println!(
        "| pane list | its bytes | key state | key state's chunk | one pane's own chunk | total, one-pane key |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let pane = size_of::<Pane>();
    for (name, bytes, heap) in [
        (
            "enum Panes { One(Pane), Many(Vec<Pane>) }",
            size_of::<Panes>(),
            0,
        ),
        (
            "SmallVec<[Pane; 1]> (this build's features)",
            size_of::<SmallVec<[Pane; 1]>>(),
            0,
        ),
        ("Vec<Pane>", size_of::<Vec<Pane>>(), chunk(pane)),
    ] {
        let state = (rest + bytes).next_multiple_of(8);
        println!(
            "| {name} | {bytes} | {state} | {} | {heap} | {} |",
            chunk(state),
            chunk(state) + heap
        );
    }
    println!();
    println!(
        "KeyState: {} bytes; Partial: {} bytes",
        size_of::<KeyState>(),
        size_of::<Partial>()
    );
}

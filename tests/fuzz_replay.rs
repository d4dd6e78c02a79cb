//! Replays the fuzzers' regression inputs (`fuzz/regressions/<target>/*`: every crasher
//! found, and the seed corpus) through the same harness the cargo-fuzz targets use, on the
//! stable toolchain: none may panic. `bash tools/fuzz.sh` runs the fuzzers (nightly).

#[path = "../fuzz/harness.rs"]
mod harness;

fn replay(target: &str) {
    let dir = harness::root().join("fuzz/regressions").join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| harness::run(target, &data));
        assert!(r.is_ok(), "{target}: {} panicked", p.display());
        n += 1;
    }
    assert!(n > 0, "{}: no inputs", dir.display());
}

#[test]
fn gguf_inputs() {
    replay("gguf");
}

#[test]
fn hf_dir_inputs() {
    replay("hf_dir");
}

#[test]
fn peft_inputs() {
    replay("peft");
}

#[test]
fn head_inputs() {
    replay("heads");
}

#[test]
fn prequant_inputs() {
    replay("prequant");
}

#[test]
fn chat_template_inputs() {
    replay("chat_template");
}

//! GPU faults become errors: a cache too large for the device is refused before anything
//! is allocated, naming the limit and the flag to lower; a driver error inside a checked
//! scope is an error naming what was being made; an error outside any scope (wgpu's
//! default handler would panic) fails the next read-back instead.

mod common;
use common::*;
use edgereason::engine::{Engine, EngineOptions, GenerateParams};
use edgereason::gpu::{GpuContext, GpuError};
use edgereason::loader::load_model;
use edgereason::sampling::SamplingParams;
use edgereason::sched::best_of_n::Decoding;

fn engine() -> Engine {
    Engine::from_host(
        load_model(&fixture("tiny-llama")).unwrap(),
        &EngineOptions::default(),
    )
    .unwrap()
}

/// A buffer one byte over what the device may allocate.
fn oversized(ctx: &GpuContext) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("oversized"),
        size: ctx.limits.max_buffer_size.saturating_add(4),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

#[test]
fn best_of_n_too_large_for_the_device_names_the_limit() {
    let e = engine();
    let prompt = e.encode("The capital of France is").unwrap();
    let c = &e.model.config;
    // Enough candidates that one layer's K cache exceeds the largest binding.
    let per_slot = (c.n_kv_head * c.head_dim * 2) as u64;
    let n = (e.ctx.max_binding() / per_slot / 64) as usize + 1;
    let params = GenerateParams {
        max_tokens: 8,
        sampling: SamplingParams {
            temperature: 1.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = match Decoding::start(&e, &prompt, n, &params) {
        Ok(_) => panic!("{n} candidates should not fit"),
        Err(err) => err,
    };
    let msg = edgereason::error_line(&err);
    assert!(
        msg.contains("max_storage_buffer_binding_size") || msg.contains("max_buffer_size"),
        "{msg}"
    );
    assert!(
        msg.contains("--best-of") && msg.contains("KV cache"),
        "{msg}"
    );
    // Nothing was allocated or broken: the engine still generates.
    let ok = e.generate(&prompt, &params, |_, _| true).unwrap();
    assert!(!ok.tokens.is_empty());
}

#[test]
fn a_driver_error_in_a_checked_scope_is_an_error() {
    let ctx = GpuContext::new(None).unwrap();
    match ctx.checked("the oversized buffer", || oversized(&ctx)) {
        Err(GpuError::Rejected { what, .. }) | Err(GpuError::OutOfMemory { what, .. }) => {
            assert_eq!(what, "the oversized buffer")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a buffer over max_buffer_size was accepted"),
    }
    // Caught in the scope: the context is fine.
    ctx.fault().unwrap();
    let buf = ctx.storage_from("ok", &[1u32, 2, 3, 4]);
    assert_eq!(ctx.read::<u32>(&buf, 0, 4).unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn an_uncaught_driver_error_fails_the_next_read_instead_of_panicking() {
    let ctx = GpuContext::new(None).unwrap();
    let buf = ctx.storage_from("ok", &[7u32; 4]);
    drop(oversized(&ctx)); // no scope: wgpu's default handler would panic here
    match ctx.read::<u32>(&buf, 0, 4) {
        Err(GpuError::Fault(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn shapes_the_kernels_cannot_run_are_refused_at_upload() {
    for (field, edit) in [
        (
            "head_dim",
            (|c| c.head_dim = 260) as fn(&mut edgereason::loader::ModelConfig),
        ),
        // A multiple of 4 but not of 8, above the 128 dims a lane per word covers.
        ("head_dim", |c| c.head_dim = 132),
        ("vocabulary", |c| c.n_vocab = 1 << 24),
        ("n_ff", |c| c.n_ff = 100),
    ] {
        let mut host = load_model(&fixture("tiny-llama")).unwrap();
        edit(&mut host.config);
        let err = match Engine::from_host(host, &EngineOptions::default()) {
            Ok(_) => panic!("{field}: accepted"),
            Err(e) => edgereason::error_line(&e),
        };
        assert!(err.contains("unsupported") && err.contains(field), "{err}");
    }
}

#[test]
fn a_session_misused_returns_errors_not_panics() {
    use edgereason::model::ForwardError;
    use edgereason::ops::sampling::RowSampling;
    let e = engine();
    let mut s = e.session().unwrap();
    let greedy = RowSampling::default();
    // One sampling setting for two rows.
    let rows = [(s.main, 7), (s.main, 8)];
    match s.forward_rows_sampled(&rows, &[greedy]) {
        Err(ForwardError::SamplingRows {
            rows: 2,
            settings: 1,
        }) => {}
        other => panic!("expected SamplingRows, got {other:?}"),
    }
    // A profiled step of more rows than the session takes.
    let too_many: Vec<u32> = vec![5; s.max_rows + 1];
    let mut profile = Default::default();
    match s.forward_profiled(&too_many, &mut profile) {
        Err(ForwardError::TooManyRows { rows, max }) => {
            assert_eq!((rows, max), (s.max_rows + 1, s.max_rows))
        }
        other => panic!("expected TooManyRows, got {other:?}"),
    }
    // The session still works.
    s.forward(&[1, 2, 3]).unwrap();
}

#[test]
fn launchers_refuse_shapes_their_kernels_cannot_run() {
    use edgereason::loader::Q4Group;
    use edgereason::ops::matmul_int4::{MatmulIo, QuantGroups, QuantMatrix};
    let e = engine();
    let ctx = &e.ctx;
    let launch_error = |r: Result<_, GpuError>, label: &str, words: &str| match r {
        Err(GpuError::Launch { label: l, what }) => {
            assert_eq!(l, label);
            assert!(what.contains(words), "{what}");
        }
        Err(other) => panic!("{label}: expected a launch error, got {other}"),
        Ok(_) => panic!("{label}: accepted"),
    };
    let group = Q4Group {
        scale: 1.0,
        min: 0.0,
        q: [0; 32],
    };
    // 3 groups for a [2, 64] matrix (4 needed), and a k that is not whole groups.
    let groups = vec![group; 3];
    launch_error(
        QuantMatrix::upload(ctx, "w", 2, 64, QuantGroups::Int4(&groups)).map(|_| ()),
        "w",
        "3 groups",
    );
    launch_error(
        QuantMatrix::upload(ctx, "w", 3, 40, QuantGroups::Int4(&groups[..3])).map(|_| ()),
        "w",
        "multiple of 32",
    );
    // A matrix of 6 columns for the prefill GEMM (it takes chunks of 4k) and for a fused
    // SwiGLU epilogue (it takes [gate; up] halves of 64 columns).
    let w = QuantMatrix::upload(ctx, "w6", 6, 32, QuantGroups::Int4(&vec![group; 6])).unwrap();
    let buf = ctx.storage("any", 4096);
    let io = MatmulIo::new(&buf, &buf, &buf, 6, &buf);
    let gemm = edgereason::ops::prefill_gemm::gemm(ctx, "gemm", &w, &buf, &io, (1, 1));
    launch_error(gemm.map(|_| ()), "gemm", "chunks of 4k columns");
    let swiglu = MatmulIo {
        swiglu: Some((&buf, &buf)),
        ..io
    };
    let mm = edgereason::ops::matmul_int4::matmul_int4(ctx, "gate_up", &w, &swiglu);
    launch_error(mm.map(|_| ()), "gate_up", "SwiGLU");
    // A vocabulary the GPU sampler cannot index.
    let io = edgereason::ops::sampling::SamplingIo {
        rows: &buf,
        out: &buf,
        next_tokens: &buf,
        top: &buf,
    };
    let s = edgereason::ops::sampling::sampling(ctx, "sampling", &buf, 1 << 24, &io);
    launch_error(s.map(|_| ()), "sampling", "vocabulary");
}

#[test]
fn a_pipeline_cache_file_the_driver_cannot_use_is_rebuilt_not_an_error() {
    // Garbage, or a cache cut short by a crash mid-write, seeds an empty cache: pipelines
    // build through it and the next save replaces the file.
    let ctx = GpuContext::new(None).unwrap();
    let dir = std::env::temp_dir().join(format!("edgereason-pipelines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let build = |cache: &edgereason::gpu::DiskPipelineCache| {
        let module = ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: None,
                source: wgpu::ShaderSource::Wgsl(
                    "@group(0) @binding(0) var<storage, read_write> v: array<u32>;\n\
                 @compute @workgroup_size(1) fn main() { v[0] = v[0] + 1u; }"
                        .into(),
                ),
            });
        let _pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: Some(&cache.cache),
            });
    };
    let Some(first) = edgereason::gpu::DiskPipelineCache::open(&ctx.device, "k", &dir) else {
        eprintln!("skipped: {} has no pipeline cache", ctx.describe());
        return;
    };
    build(&first);
    first.save().unwrap();
    let valid = std::fs::read(dir.join("k")).unwrap();
    let mut garbage = valid.clone();
    garbage.iter_mut().skip(4).for_each(|b| *b ^= 0x5a);
    for bad in [vec![7u8; 40], valid[..valid.len() / 2].to_vec(), garbage] {
        std::fs::write(dir.join("k"), &bad).unwrap();
        let cache = edgereason::gpu::DiskPipelineCache::open(&ctx.device, "k", &dir).unwrap();
        build(&cache);
        cache.save().unwrap();
        assert!(ctx.fault().is_ok(), "{:?}", ctx.fault());
        let kept = std::fs::read(dir.join("k")).unwrap();
        assert_eq!(
            Some(kept),
            cache.cache.get_data(),
            "the file is the cache's data again"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

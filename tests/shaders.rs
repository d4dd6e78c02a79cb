//! Every WGSL kernel variant the engine can build is validated by naga and translated to
//! MSL (Metal) and SPIR-V (Vulkan), so a shader that would fail on a Mac or a phone fails
//! here first. (The GL path is run for real in tests/kernels.rs.)

use edgereason::gpu::{expand_shader, ShaderDefines, SHADER_FILES};

fn check(name: &str, defines: &ShaderDefines) {
    let src = expand_shader(name, defines);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&src)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name} {defines:?}: validation: {e:?}"));
    naga::back::msl::write_string(&module, &info, &Default::default(), &Default::default())
        .unwrap_or_else(|e| panic!("{name}: MSL: {e:?}"));
    naga::back::spv::write_vec(&module, &info, &Default::default(), None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e:?}"));
}

#[test]
fn every_shader_variant_validates_and_translates() {
    for name in SHADER_FILES
        .iter()
        .filter(|n| !["matmul_int4", "attention", "lora"].contains(n))
    {
        check(name, &ShaderDefines::new());
    }
    for rows in [1, 4, 16] {
        check("lora", &ShaderDefines::new().with("ROWS", rows));
        check(
            "matmul_int4",
            &ShaderDefines::new().with("ROWS", rows).with("LORA", 1),
        );
    }
    let queries = edgereason::ops::attention::PREFIX_QUERIES;
    check("attention", &ShaderDefines::new().with("ROWS", queries));
    check(
        "attention",
        &ShaderDefines::new()
            .with("SUBGROUPS", 1)
            .with("ROWS", queries),
    );
    for rows in 1..=16 {
        check("matmul_int4", &ShaderDefines::new().with("ROWS", rows));
    }
    // The epilogue variants (SwiGLU, RoPE + KV store, the next norm's blocks), each with
    // and without fused LoRA; the prefill GEMM's register tiles; flash prefill attention.
    for rows in [1, 4, 16] {
        for lora in [0, 1] {
            let base = || ShaderDefines::new().with("ROWS", rows).with("LORA", lora);
            check("matmul_int4", &base().with("SWIGLU", 1));
            check("matmul_int4", &base().with("ROPE", 1).with("HEAD_DIM", 64));
            check("matmul_int4", &base().with("NORM", 1));
        }
    }
    for (rows, cols) in [(1, 1), (4, 4), (8, 8), (16, 16)] {
        check(
            "matmul_int4",
            &ShaderDefines::new().with("ROWS", rows).with("COLS", cols),
        );
    }
    for hd in [64, 128] {
        check(
            "attention",
            &ShaderDefines::new()
                .with("ROWS", queries)
                .with("HEAD_DIM", hd),
        );
    }
}

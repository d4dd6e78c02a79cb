//! Every WGSL kernel variant the engine can build is validated by naga and translated to
//! MSL (Metal), SPIR-V (Vulkan), HLSL (DX12, shader model 6.0) and, for the variants without
//! subgroups, GLSL 4.3 and GLSL ES 3.1 (the GL backend on desktops, and on phones without a
//! Vulkan driver), so a shader that would fail on a Mac, a Windows machine or a phone fails
//! here first. (The GL path is also run for real in tests/kernels.rs.)

use edgereason::gpu::{expand_shader, ShaderDefines, SHADER_FILES};

/// A variant parsed and validated by naga (panics naming it otherwise).
fn validated(name: &str, defines: &ShaderDefines) -> (naga::Module, naga::valid::ModuleInfo) {
    let src = expand_shader(name, defines);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&src)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name} {defines:?}: validation: {e:?}"));
    (module, info)
}

fn check(name: &str, defines: &ShaderDefines) {
    let (module, info) = validated(name, defines);
    naga::back::msl::write_string(&module, &info, &Default::default(), &Default::default())
        .unwrap_or_else(|e| panic!("{name}: MSL: {e:?}"));
    naga::back::spv::write_vec(&module, &info, &Default::default(), None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e:?}"));
    // DX12: shader model 6.0 has the wave (subgroup) operations.
    let hlsl = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let mut out = String::new();
    naga::back::hlsl::Writer::new(&mut out, &hlsl, &Default::default())
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{name} {defines:?}: HLSL: {e:?}"));
    // The GL backend (desktop GLSL 4.30 here) builds only the variants without subgroups.
    if defines.get("SUBGROUPS").unwrap_or(0) == 0 {
        check_glsl(name, defines, &module, &info);
    }
}

/// GLSL for each entry point of a module, as wgpu's GL backend writes it, for desktop GL
/// and for GLES.
fn check_glsl(
    name: &str,
    defines: &ShaderDefines,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
) {
    // Desktop GL 4.3, and GLES 3.1: Android's compute where no Vulkan driver exists.
    for version in [
        naga::back::glsl::Version::Desktop(430),
        naga::back::glsl::Version::Embedded {
            version: 310,
            is_webgl: false,
        },
    ] {
        check_glsl_version(name, defines, module, info, version);
    }
}

fn check_glsl_version(
    name: &str,
    defines: &ShaderDefines,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    version: naga::back::glsl::Version,
) {
    let options = naga::back::glsl::Options {
        version,
        ..Default::default()
    };
    for ep in &module.entry_points {
        let pipeline = naga::back::glsl::PipelineOptions {
            shader_stage: ep.stage,
            entry_point: ep.name.clone(),
            multiview: None,
        };
        let mut out = String::new();
        naga::back::glsl::Writer::new(
            &mut out,
            module,
            info,
            &options,
            &pipeline,
            Default::default(),
        )
        .and_then(|mut w| w.write())
        .unwrap_or_else(|e| panic!("{name} {defines:?} {}: GLSL {version:?}: {e:?}", ep.name));
    }
}

#[test]
fn every_shader_variant_validates_and_translates() {
    for name in SHADER_FILES.iter().filter(|n| {
        ![
            "matmul_int4",
            "attention",
            "lora",
            "prefill_gemm",
            "prefill_coop",
        ]
        .contains(n)
    }) {
        check(name, &ShaderDefines::new());
    }
    for rows in [1, 4, 16] {
        check("lora", &ShaderDefines::new().with("ROWS", rows));
        check(
            "matmul_int4",
            &ShaderDefines::new()
                .with("ROWS", rows)
                .with("LORA", 1)
                .with("SLICES", 1),
        );
    }
    let queries = edgereason::ops::attention::PREFIX_QUERIES;
    for (subgroups, quads) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        for slices in [1, 4] {
            check(
                "attention",
                &ShaderDefines::new()
                    .with("SUBGROUPS", subgroups)
                    .with("ROWS", queries)
                    .with("QUADS", quads)
                    .with("SLICES", slices),
            );
        }
    }
    for rows in 1..=16 {
        for subgroups in [0, 1] {
            for slices in [1, 4] {
                let defines = ShaderDefines::new()
                    .with("SUBGROUPS", subgroups)
                    .with("SLICES", slices);
                check("matmul_int4", &defines.with("ROWS", rows));
            }
        }
    }
    // The epilogue variants (SwiGLU, RoPE + KV store, the next norm's blocks), each with
    // and without fused LoRA; the prefill GEMM's register tiles; flash prefill attention.
    for rows in [1, 4, 16] {
        for lora in [0, 1] {
            let base = || {
                ShaderDefines::new()
                    .with("ROWS", rows)
                    .with("LORA", lora)
                    .with("SUBGROUPS", lora)
                    .with("SLICES", 1 + 2 * lora)
            };
            check("matmul_int4", &base().with("SWIGLU", 1));
            check("matmul_int4", &base().with("ROPE", 1).with("HEAD_DIM", 64));
            check("matmul_int4", &base().with("NORM", 1));
        }
    }
    for (rows, cols) in [(1, 1), (4, 2), (8, 2), (16, 4)] {
        for subgroups in [0, 1] {
            check(
                "prefill_gemm",
                &ShaderDefines::new()
                    .with("ROWS", rows)
                    .with("COLS", cols)
                    .with("SUBGROUPS", subgroups),
            );
        }
    }
    for (hd, quads) in [(20, 0), (64, 1), (128, 1)] {
        check(
            "attention",
            &ShaderDefines::new()
                .with("ROWS", queries)
                .with("HEAD_DIM", hd)
                .with("QUADS", quads)
                .with("SLICES", 1),
        );
    }
}

/// The cooperative-matrix prefill GEMM for each tile shape a device can offer (8x8 on
/// Metal and lavapipe, 16x16 on NVIDIA/AMD/Intel Vulkan) and subgroup size: validated and
/// translated to SPIR-V, and to MSL where Metal has the shape (simdgroup matrices are
/// 8x8). DX12 and GL have no cooperative matrices in wgpu: the engine never builds it there.
#[test]
fn cooperative_matrix_variants_validate_and_translate() {
    for (tile, sg, rows, cols, int8) in [
        (8, 8, 2, 2, 0),
        (8, 32, 1, 1, 1),
        (16, 32, 2, 2, 0),
        (16, 32, 2, 2, 1),
        (16, 64, 1, 4, 0),
    ] {
        let defines =
            edgereason::ops::prefill_coop::defines(tile, sg, (rows, cols)).with("INT8", int8);
        let (module, info) = validated("prefill_coop", &defines);
        naga::back::spv::write_vec(&module, &info, &Default::default(), None)
            .unwrap_or_else(|e| panic!("prefill_coop {defines:?}: SPIR-V: {e:?}"));
        if tile == 8 {
            let options = naga::back::msl::Options {
                lang_version: (2, 3),
                ..Default::default()
            };
            naga::back::msl::write_string(&module, &info, &options, &Default::default())
                .unwrap_or_else(|e| panic!("prefill_coop {defines:?}: MSL: {e:?}"));
        }
    }
}

/// The Rust side of a kernel's uniform against naga's reflection of the WGSL struct:
/// same field names in the same order, same byte offsets, same size.
fn check_params<P: edgereason::ops::KernelParams>() {
    check_params_of::<P>(P::SHADER)
}

/// As [`check_params`], against the `Params`-named struct of shader `shader`.
fn check_params_of<P: edgereason::ops::KernelParams>(shader: &str) {
    // Every optional struct compiled in (the RoPE epilogue's uniform is under ROPE).
    let defines = ShaderDefines::new()
        .with("ROWS", 1)
        .with("COLS", 1)
        .with("SLICES", 1);
    let defines = match (shader, P::STRUCT) {
        (_, "Rope") => defines.with("ROPE", 1).with("HEAD_DIM", 64),
        ("prefill_coop", _) => edgereason::ops::prefill_coop::defines(8, 8, (1, 1)),
        _ => defines,
    };
    let src = expand_shader(shader, &defines);
    let module = naga::front::wgsl::parse_str(&src).unwrap();
    let (members, span) = module
        .types
        .iter()
        .find_map(|(_, ty)| match &ty.inner {
            naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some(P::STRUCT) => {
                Some((members.clone(), *span))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{}: no struct {}", shader, P::STRUCT));
    let wgsl: Vec<(String, usize)> = members
        .iter()
        .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
        .collect();
    let rust: Vec<(String, usize)> = P::FIELDS.iter().map(|&(n, o)| (n.to_string(), o)).collect();
    assert_eq!(rust, wgsl, "{}::{} fields", shader, P::STRUCT);
    assert_eq!(
        std::mem::size_of::<P>(),
        span as usize,
        "{}::{} size",
        shader,
        P::STRUCT
    );
}

#[test]
fn kernel_params_structs_match_their_wgsl_layouts() {
    use edgereason::ops::*;
    check_params::<attention::AttentionParams>();
    check_params::<embedding::EmbeddingParams>();
    check_params::<lora::LoraParams>();
    check_params::<matmul_int4::MatmulParams>();
    check_params::<matmul_int4::RopeEpilogue>();
    check_params::<prefill_gemm::GemmParams>();
    // prefill_coop.wgsl's uniform is filled by the same struct.
    check_params_of::<prefill_gemm::GemmParams>("prefill_coop");
    check_params::<quantize_act::QuantizeParams>();
    check_params::<read_bandwidth::ReadParams>();
    check_params::<rmsnorm::NormParams>();
    check_params::<rope::RopeParams>();
    check_params::<sampling::Params>();
    check_params::<swiglu::SwigluParams>();
    // Every shader with a Params struct is covered (a new kernel must add its check).
    let covered = [
        "attention",
        "embedding",
        "lora",
        "matmul_int4",
        "prefill_gemm",
        "prefill_coop",
        "quantize_act",
        "read_bandwidth",
        "rmsnorm",
        "rope",
        "sampling",
        "swiglu",
    ];
    for name in SHADER_FILES {
        let src = expand_shader(name, &ShaderDefines::new().with("ROWS", 1));
        if src.contains("struct Params") {
            assert!(
                covered.contains(name),
                "{name}: its Params struct has no Rust check"
            );
        }
    }
}

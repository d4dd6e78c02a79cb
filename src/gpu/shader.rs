//! WGSL sources and the small preprocessor the kernels use.
//!
//! Every kernel file is prefixed with `shaders/prelude.wgsl` (shared helpers) and with one
//! `const NAME: u32 = V;` per define. One expansion makes register-tiled kernels readable:
//! a line containing `{r}` is repeated for r in 0..ROWS with `{r}` replaced, so a kernel
//! keeps one accumulator *variable* per activation row (LLVM-based drivers such as lavapipe
//! spill private arrays indexed by a loop counter to memory; named variables stay in
//! registers); likewise `{c}` for c in 0..COLS, and a line with both is repeated for every
//! (r, c) pair (one accumulator per row and column of a register tile). Lines between
//! `//#if NAME`, `//#else` and `//#endif` are kept or dropped by whether define NAME is
//! non-zero, so a kernel can carry a subgroup variant next to its portable one (WGSL has
//! no preprocessor, and a subgroup call must not even appear in a shader for a device
//! without subgroups). A kernel file's `enable …;` lines (WGSL extensions such as f16 and
//! cooperative matrices) are moved to the very top, where WGSL requires them.

/// Compile-time constants for one pipeline variant, e.g. `ROWS = 4`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShaderDefines(pub Vec<(&'static str, u32)>);

impl ShaderDefines {
    pub fn new() -> Self {
        Self(Vec::new())
    }
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.0.push((name, value));
        self
    }
    pub fn get(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
    pub fn key(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Raw text of a kernel file in `shaders/` (compiled into the binary).
///
/// # Panics
/// If `name` is not one of [`SHADER_FILES`] (or "prelude"): names are the launchers' literals.
#[expect(
    clippy::panic,
    reason = "shader names are literals in the launchers, not input"
)]
pub fn shader_file(name: &str) -> &'static str {
    match name {
        "prelude" => include_str!("../../shaders/prelude.wgsl"),
        "matmul_int4" => include_str!("../../shaders/matmul_int4.wgsl"),
        "prefill_gemm" => include_str!("../../shaders/prefill_gemm.wgsl"),
        "prefill_coop" => include_str!("../../shaders/prefill_coop.wgsl"),
        "quantize_act" => include_str!("../../shaders/quantize_act.wgsl"),
        "rmsnorm" => include_str!("../../shaders/rmsnorm.wgsl"),
        "rope" => include_str!("../../shaders/rope.wgsl"),
        "attention" => include_str!("../../shaders/attention.wgsl"),
        "swiglu" => include_str!("../../shaders/swiglu.wgsl"),
        "embedding" => include_str!("../../shaders/embedding.wgsl"),
        "read_bandwidth" => include_str!("../../shaders/read_bandwidth.wgsl"),
        "lora" => include_str!("../../shaders/lora.wgsl"),
        "sampling" => include_str!("../../shaders/sampling.wgsl"),
        other => panic!("unknown shader '{other}'"),
    }
}

/// Every kernel file, for the validation test.
pub const SHADER_FILES: &[&str] = &[
    "matmul_int4",
    "prefill_gemm",
    "prefill_coop",
    "quantize_act",
    "rmsnorm",
    "rope",
    "attention",
    "swiglu",
    "embedding",
    "read_bandwidth",
    "lora",
    "sampling",
];

/// Full WGSL for a kernel file: defines, prelude, body with `{r}` lines expanded.
///
/// # Panics
/// If `name` is not one of [`SHADER_FILES`] or the file's `//#if` lines do not balance:
/// the files are compiled in, and tests/shaders.rs expands every one.
#[expect(
    clippy::expect_used,
    reason = "the shader files are compiled in and tested"
)]
pub fn expand_shader(name: &str, defines: &ShaderDefines) -> String {
    let rows = defines.get("ROWS").unwrap_or(1);
    let cols = defines.get("COLS").unwrap_or(1);
    let mut out = String::new();
    for line in shader_file(name).lines() {
        if line.starts_with("enable ") {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (n, v) in &defines.0 {
        out.push_str(&format!("const {n}: u32 = {v}u;\n"));
    }
    out.push_str(shader_file("prelude"));
    out.push('\n');
    // Stack of (this branch taken, some branch already taken) for //#if blocks.
    let mut conds: Vec<(bool, bool)> = Vec::new();
    for line in shader_file(name).lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("//#if ") {
            let on = defines.get(name.trim()).unwrap_or(0) != 0;
            conds.push((on, on));
            continue;
        } else if t == "//#else" {
            let last = conds.last_mut().expect("//#else without //#if");
            *last = (!last.1, true);
            continue;
        } else if t == "//#endif" {
            conds.pop().expect("//#endif without //#if");
            continue;
        }
        if conds.iter().any(|(on, _)| !on) || line.starts_with("enable ") {
            continue;
        }
        let rs = if line.contains("{r}") { 0..rows } else { 0..1 };
        let cs = if line.contains("{c}") { 0..cols } else { 0..1 };
        for r in rs {
            for c in cs.clone() {
                out.push_str(
                    &line
                        .replace("{r}", &r.to_string())
                        .replace("{c}", &c.to_string()),
                );
                out.push('\n');
            }
        }
    }
    out
}

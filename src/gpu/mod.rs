//! GPU context: adapter choice, device with the adapter's own limits, the shader
//! preprocessor and a pipeline cache keyed by (shader, entry, defines).

mod buffers;
mod pipeline_cache;
mod shader;
mod stats;
pub mod tuning;

pub use buffers::*;
pub use pipeline_cache::DiskPipelineCache;
pub use shader::{expand_shader, ShaderDefines, SHADER_FILES};
pub use stats::{GpuStats, StatsSnapshot};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why no usable GPU device could be made. Callers branch on `NoAdapter` to say
/// "install a Vulkan driver" rather than print a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found (tried Vulkan, Metal, DX12, GL); install a driver, e.g. `apt-get install mesa-vulkan-drivers` for the CPU Vulkan driver")]
    NoAdapter,
    #[error("no adapter matches --device '{wanted}'; available: {available}")]
    NoMatch { wanted: String, available: String },
    #[error("could not open device '{name}': {reason}")]
    RequestDevice { name: String, reason: String },
    #[error("GPU readback failed: {0}")]
    Readback(String),
    /// Allocating or recording `what` failed inside an error scope.
    #[error("{what}: the GPU is out of memory ({reason})")]
    OutOfMemory { what: String, reason: String },
    #[error("{what}: rejected by the GPU driver ({reason})")]
    Rejected { what: String, reason: String },
    /// A launcher given a shape or variant its kernel cannot run (`label` names the launch).
    #[error("{label}: {what}")]
    Launch { label: String, what: String },
    /// An error outside any scope, or the device lost: the context is unusable.
    #[error("GPU failure: {0}")]
    Fault(String),
    /// A buffer larger than the device allows, found before allocating.
    #[error("{what} needs {} in one buffer, over this device's {limit} ({}){hint}", mib(*.bytes), mib(*.max))]
    TooLarge {
        what: String,
        bytes: u64,
        limit: &'static str,
        max: u64,
        hint: String,
    },
}

/// `Ok` if `ok`, else [`GpuError::Launch`] naming `label`: how launchers check their inputs.
pub fn ensure_launch(ok: bool, label: &str, what: impl FnOnce() -> String) -> Result<(), GpuError> {
    if ok {
        return Ok(());
    }
    Err(GpuError::Launch {
        label: label.to_string(),
        what: what(),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// What `edgereason devices` prints for one adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_size: [u32; 2],
    pub timestamps: bool,
    /// The driver can hand its compiled pipelines back for a later process (Vulkan).
    pub pipeline_cache: bool,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    /// Cooperative-matrix (tensor core) shapes the adapter offers to WGSL, as
    /// "MxNxK AB->CR" (e.g. "16x16x16 f16->f32"); empty where it has none.
    pub cooperative_matrix: Vec<String>,
}

fn summarize(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let f = a.features();
    let l = a.limits();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        shader_f16: f.contains(wgpu::Features::SHADER_F16),
        subgroups: f.contains(wgpu::Features::SUBGROUP),
        subgroup_size: [info.subgroup_min_size, info.subgroup_max_size],
        timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
        pipeline_cache: f.contains(wgpu::Features::PIPELINE_CACHE),
        max_buffer_size: l.max_buffer_size,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        cooperative_matrix: a
            .cooperative_matrix_properties()
            .iter()
            .map(|c| {
                let (m, n, k) = (c.m_size, c.n_size, c.k_size);
                format!("{m}x{n}x{k} {:?}->{:?}", c.ab_type, c.cr_type).to_lowercase()
            })
            .collect(),
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::all();
    }
    wgpu::Instance::new(desc)
}

fn adapters() -> Vec<wgpu::Adapter> {
    let inst = instance();
    let mut list = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    // Best first: discrete > integrated > virtual > CPU, Vulkan/Metal/DX12 before GL.
    list.sort_by_key(|a| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let backend = if info.backend == wgpu::Backend::Gl {
            1
        } else {
            0
        };
        (backend, kind)
    });
    list
}

/// The adapter `selector` names: an index into `all`, else the first whose name contains
/// it or whose backend it is (case-insensitive); the best one without a selector.
fn pick_adapter(all: &[wgpu::Adapter], selector: Option<&str>) -> Result<usize, GpuError> {
    let Some(s) = selector else {
        return Ok(0);
    };
    let s_low = s.to_lowercase();
    let found = s
        .parse::<usize>()
        .ok()
        .filter(|&i| i < all.len())
        .or_else(|| {
            all.iter().position(|a| {
                let sum = summarize(0, a);
                sum.name.to_lowercase().contains(&s_low) || sum.backend.to_lowercase() == s_low
            })
        });
    found.ok_or_else(|| GpuError::NoMatch {
        wanted: s.to_string(),
        available: all
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let s = summarize(i, a);
                format!("{i}: {} ({})", s.name, s.backend)
            })
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The driver's pipeline cache under `<cache>/pipelines/`, named by adapter and driver,
/// unless EDGEREASON_PIPELINE_CACHE=0 (see [`DiskPipelineCache`]).
fn disk_pipeline_cache(
    device: &wgpu::Device,
    info: &wgpu::AdapterInfo,
) -> Option<DiskPipelineCache> {
    if std::env::var("EDGEREASON_PIPELINE_CACHE").is_ok_and(|v| v == "0") {
        return None;
    }
    let key = wgpu::util::pipeline_cache_key(info)?;
    DiskPipelineCache::open(device, &key, &tuning::cache_root()?.join("pipelines"))
}

/// The features the kernels can use, where the adapter has them.
fn kernel_features() -> wgpu::Features {
    wgpu::Features::PIPELINE_CACHE
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
}

/// The square tile side (16, else 8) of the adapter's f16 × f16 → f32 cooperative-matrix
/// shapes, the ones the prefill kernel uses; `None` without them, or with
/// EDGEREASON_COOPERATIVE_MATRIX=0.
fn cooperative_tile(adapter: &wgpu::Adapter) -> Option<u32> {
    if std::env::var("EDGEREASON_COOPERATIVE_MATRIX").is_ok_and(|v| v == "0")
        || !adapter
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        return None;
    }
    use wgpu::CooperativeScalarType::{F16, F32};
    let shapes = adapter.cooperative_matrix_properties();
    [16, 8].into_iter().find(|&t| {
        shapes.iter().any(|c| {
            (c.m_size, c.n_size, c.k_size) == (t, t, t) && c.ab_type == F16 && c.cr_type == F32
        })
    })
}

/// Open `adapter` (called `name` in errors) with `features` and `limits`.
fn request_device(
    adapter: &wgpu::Adapter,
    name: &str,
    features: wgpu::Features,
    limits: &wgpu::Limits,
) -> Result<(wgpu::Device, wgpu::Queue), GpuError> {
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("edgereason"),
        required_features: features,
        required_limits: limits.clone(),
        // SAFETY: the only experimental feature ever requested is cooperative matrices
        // (see `cooperative_tile`), used by one kernel whose every variant is validated by
        // naga (tests/shaders.rs) and checked against the CPU reference (tests/kernels.rs).
        experimental_features: if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        },
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| GpuError::RequestDevice {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// The slot that holds `device`'s first uncaught error or its loss. wgpu's default
/// handler panics; record the fault instead and fail the next read.
fn record_faults(device: &wgpu::Device) -> Arc<Mutex<Option<String>>> {
    let fault: Arc<Mutex<Option<String>>> = Default::default();
    let record = |fault: &Arc<Mutex<Option<String>>>| {
        let fault = fault.clone();
        move |msg: String| {
            crate::sync::lock(&fault).get_or_insert(msg);
        }
    };
    let on_error = record(&fault);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| on_error(e.to_string())));
    let on_lost = record(&fault);
    device.set_device_lost_callback(move |reason, msg| {
        on_lost(format!("device lost ({reason:?}): {msg}"))
    });
    fault
}

/// All adapters wgpu finds, best first (the order `--device N` indexes).
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters()
        .iter()
        .enumerate()
        .map(|(i, a)| summarize(i, a))
        .collect()
}

/// One device and queue plus everything kernels need to know about them.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Kernels use subgroup operations (the adapter has SUBGROUP and it was not turned off).
    pub subgroups: bool,
    /// Side of the f16 → f32 cooperative-matrix tiles (8 or 16) the device was opened with,
    /// where it has them and subgroups are on (the prefill GEMM's tensor-core path).
    pub cooperative_tile: Option<u32>,
    /// Launches, passes, submissions and read-backs so far (see [`GpuStats`]).
    pub stats: GpuStats,
    /// The first error no scope caught, or the device's loss: every read-back reports it.
    fault: Arc<Mutex<Option<String>>>,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    layouts: Mutex<HashMap<String, Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)>>>,
    /// The driver's compiled pipelines, kept between runs where it offers them.
    disk_cache: Option<DiskPipelineCache>,
}

impl Drop for GpuContext {
    fn drop(&mut self) {
        // Best effort: a cache that cannot be written only costs the next start its compiles.
        let _ = self.save_pipelines();
    }
}

impl GpuContext {
    /// Open a device. `selector` is an adapter index, or a case-insensitive substring of
    /// its name or backend ("vulkan", "gl", "nvidia"); `None` reads `EDGEREASON_DEVICE`,
    /// else takes the best adapter.
    pub fn new(selector: Option<&str>) -> Result<Arc<Self>, GpuError> {
        Self::with_subgroups(selector, true)
    }

    /// As [`new`](Self::new); `allow_subgroups: false` forces the portable kernels (what
    /// the GL backend and devices without subgroups run) on any device, for tests.
    pub fn with_subgroups(
        selector: Option<&str>,
        allow_subgroups: bool,
    ) -> Result<Arc<Self>, GpuError> {
        let env_sel = std::env::var("EDGEREASON_DEVICE").ok();
        let selector = selector
            .map(str::to_string)
            .or(env_sel)
            .filter(|s| !s.is_empty());
        let all = adapters();
        if all.is_empty() {
            return Err(GpuError::NoAdapter);
        }
        let pick = pick_adapter(&all, selector.as_deref())?;
        let adapter = &all[pick];
        let summary = summarize(pick, adapter);
        tuning::load(&tuning::device_key(&summary));
        // Only what the kernels can use; every limit is the adapter's own.
        let subgroups = allow_subgroups && adapter.features().contains(wgpu::Features::SUBGROUP);
        let cooperative_tile = cooperative_tile(adapter).filter(|_| subgroups);
        let mut features = adapter.features() & kernel_features();
        if cooperative_tile.is_some() {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let limits = adapter.limits();
        let (device, queue) = request_device(adapter, &summary.name, features, &limits)?;
        let fault = record_faults(&device);
        let disk_cache = disk_pipeline_cache(&device, &adapter.get_info());
        Ok(Arc::new(Self {
            device,
            queue,
            adapter: summary,
            limits,
            features,
            subgroups,
            cooperative_tile,
            stats: GpuStats::default(),
            fault,
            pipelines: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            disk_cache,
        }))
    }

    /// Save the pipelines built so far for the next process on this adapter and driver
    /// (where the driver offers its cache: see [`DiskPipelineCache`]); Ok(false) when there
    /// is no cache or nothing new. Dropping the context saves too; a server, which is
    /// stopped rather than dropped, saves once its warm-up is done.
    pub fn save_pipelines(&self) -> std::io::Result<bool> {
        self.disk_cache.as_ref().map_or(Ok(false), |c| c.save())
    }

    /// The device's first uncaught error or its loss, if any.
    pub fn fault(&self) -> Result<(), GpuError> {
        match crate::sync::lock(&self.fault).as_ref() {
            Some(msg) => Err(GpuError::Fault(msg.clone())),
            None => Ok(()),
        }
    }

    /// Run `f` (allocations, pipeline or bind-group creation) with the device's
    /// out-of-memory and validation errors caught: they come back as an error naming
    /// `what` rather than a fault.
    pub fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let rejected = pollster::block_on(validation.pop());
        let out_of_memory = pollster::block_on(oom.pop());
        let what = what.to_string();
        match (out_of_memory, rejected) {
            (Some(e), _) => Err(GpuError::OutOfMemory {
                what,
                reason: e.to_string(),
            }),
            (None, Some(e)) => Err(GpuError::Rejected {
                what,
                reason: e.to_string(),
            }),
            (None, None) => Ok(out),
        }
    }

    /// `bytes` in one bound storage buffer fits this device, else [`GpuError::TooLarge`]
    /// naming `what` and the limit (checked before allocating); `hint` says what to lower.
    pub fn check_binding(&self, what: &str, bytes: u64, hint: &str) -> Result<(), GpuError> {
        let binding = self.limits.max_storage_buffer_binding_size;
        let (limit, max) = if binding <= self.limits.max_buffer_size {
            ("max_storage_buffer_binding_size", binding)
        } else {
            ("max_buffer_size", self.limits.max_buffer_size)
        };
        if bytes <= max {
            return Ok(());
        }
        Err(GpuError::TooLarge {
            what: what.to_string(),
            bytes,
            limit,
            max,
            hint: hint.to_string(),
        })
    }

    /// Begin a compute pass on `enc` (counted in [`stats`](Self::stats)).
    pub fn compute_pass<'e>(&self, enc: &'e mut wgpu::CommandEncoder) -> wgpu::ComputePass<'e> {
        self.stats.pass();
        enc.begin_compute_pass(&Default::default())
    }

    /// Submit `enc`'s commands (counted in [`stats`](Self::stats)).
    pub fn submit(&self, enc: wgpu::CommandEncoder) {
        self.stats.submit();
        self.queue.submit([enc.finish()]);
    }

    /// Whether the adapter is a CPU driver (lavapipe, llvmpipe GL): kernels and launch
    /// plans that suit its cores are chosen over the GPU ones.
    pub fn is_cpu(&self) -> bool {
        self.adapter.device_type == "Cpu"
    }

    /// "llvmpipe (LLVM 15.0.6, 256 bits) / Vulkan"
    pub fn describe(&self) -> String {
        format!("{} / {}", self.adapter.name, self.adapter.backend)
    }

    /// Largest byte size one storage binding may have on this device.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// The (shared) layout of a kernel entry whose bindings are `kinds`.
    pub fn cached_layout(
        &self,
        shader: &str,
        entry: &str,
        kinds: &[Binding],
    ) -> Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)> {
        let key = format!("{shader}:{entry}:{}", kinds.len());
        let mut map = crate::sync::lock(&self.layouts);
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(self.layout(&key, kinds)))
            .clone()
    }

    /// A compute pipeline for `entry` of shader `name` (a file in `shaders/`) with
    /// `defines` expanded; compiled once per distinct key.
    pub fn pipeline(
        &self,
        name: &str,
        entry: &str,
        defines: &ShaderDefines,
        layout: &wgpu::PipelineLayout,
    ) -> Arc<wgpu::ComputePipeline> {
        let key = format!("{name}:{entry}:{}", defines.key());
        if let Some(p) = crate::sync::lock(&self.pipelines).get(&key) {
            return p.clone();
        }
        let started = std::time::Instant::now();
        let source = expand_shader(name, defines);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let p = Arc::new(
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&key),
                    layout: Some(layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: self.disk_cache.as_ref().map(|c| &c.cache),
                }),
        );
        self.stats.compiled(started.elapsed());
        crate::sync::lock(&self.pipelines).insert(key, p.clone());
        p
    }
}

//! Compiled kernels kept between runs: the driver's pipeline cache (Vulkan), saved under
//! `<cache>/pipelines/<adapter key>` and handed back to the driver when the next process
//! opens the same adapter and driver.
//!
//! Every kernel variant is compiled by the driver the first time a process builds it
//! (lavapipe: 50-150 ms each, ~100 variants a model; phones: similar). Desktop drivers
//! keep their own disk caches; Android's often leave it to the application. With the
//! driver's compiled code handed back, a second `run` or `serve` skips that work.
//! `EDGEREASON_PIPELINE_CACHE=0` turns it off; a file the driver does not accept (another
//! driver version, a truncated write) is dropped and rebuilt, never an error.

use std::path::PathBuf;
use std::sync::Mutex;

/// The device's pipeline cache and the file it came from and goes back to.
pub struct DiskPipelineCache {
    pub cache: wgpu::PipelineCache,
    path: PathBuf,
    /// Hash of the file's bytes as last read or written (saving skips an unchanged cache).
    saved: Mutex<u64>,
}

impl DiskPipelineCache {
    /// The cache for `device` (opened with [`wgpu::Features::PIPELINE_CACHE`]) seeded from
    /// file `dir/key`, where `key` names the adapter and driver
    /// (`wgpu::util::pipeline_cache_key`); `None` without the feature.
    ///
    /// ```no_run
    /// let ctx = edgereason::gpu::GpuContext::new(None)?;
    /// let dir = std::env::temp_dir().join("pipelines");
    /// if let Some(cache) = edgereason::gpu::DiskPipelineCache::open(&ctx.device, "my-gpu", &dir) {
    ///     cache.save()?; // dir/my-gpu
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(device: &wgpu::Device, key: &str, dir: &std::path::Path) -> Option<Self> {
        if !device.features().contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let path = dir.join(key);
        let data = std::fs::read(&path).ok();
        // SAFETY: the data is what `get_data` of a cache of this adapter key wrote (the
        // file is named by the key); wgpu checks its header, size and adapter before
        // handing it to the driver, and `fallback` starts empty where it does not match.
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("edgereason pipelines"),
                data: data.as_deref(),
                fallback: true,
            })
        };
        Some(DiskPipelineCache {
            cache,
            path,
            saved: Mutex::new(data.as_deref().map_or(0, hash)),
        })
    }

    /// Write the cache back if it changed since it was read or last written (to a
    /// temporary file, then renamed: a reader never sees half a file). Ok(false) when
    /// there was nothing new.
    pub fn save(&self) -> std::io::Result<bool> {
        let Some(data) = self.cache.get_data() else {
            return Ok(false);
        };
        let mut saved = crate::sync::lock(&self.saved);
        if hash(&data) == *saved {
            return Ok(false);
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, &self.path)?;
        *saved = hash(&data);
        Ok(true)
    }

    /// Where the cache is kept.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

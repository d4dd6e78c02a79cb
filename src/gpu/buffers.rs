//! Buffer helpers: creation, upload, readback, and bind-group layouts from a short list
//! of binding kinds.

use super::{GpuContext, GpuError};
use wgpu::util::DeviceExt;

/// Kind of one binding in a kernel's bind group (group 0, bindings 0..n in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    Uniform,
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// Storage usage every engine buffer gets: kernels read/write it, tests copy it out.
pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

impl GpuContext {
    /// Bind-group and pipeline layout for a kernel whose bindings are `kinds` in order.
    pub fn layout(
        &self,
        label: &str,
        kinds: &[Binding],
    ) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let entries: Vec<_> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match k {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let bgl = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
        (bgl, pl)
    }

    /// A bind group binding `buffers` (whole) at 0..n.
    pub fn bind(
        &self,
        layout: &wgpu::BindGroupLayout,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout,
            entries: &entries,
        })
    }

    /// Zeroed storage buffer of `size` bytes (at least 16, so empty tensors still bind).
    pub fn storage(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).next_multiple_of(4),
            usage: STORAGE,
            mapped_at_creation: false,
        })
    }

    /// Storage buffer holding `data`.
    pub fn storage_from<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() < 16 {
            let mut padded = bytes.to_vec();
            padded.resize(16, 0);
            return self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: &padded,
                    usage: STORAGE,
                });
        }
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: STORAGE,
            })
    }

    /// Uniform buffer holding one params struct.
    pub fn uniform_from<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Uniform buffer holding a params struct given as words.
    pub fn uniform_words(&self, label: &str, words: &[u32]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(words),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Copy `len` elements of `T` starting at element `offset` out of `buf` (waits for the GPU).
    pub fn read<T: bytemuck::Pod>(
        &self,
        buf: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        self.read_later(buf, offset, len)?.wait(self)
    }

    /// Queue a copy of `len` elements of `T` from element `offset` of `buf`, as of every
    /// command submitted so far, without waiting for it: work submitted afterwards may
    /// overwrite `buf` while the copy is still to be read ([`PendingRead::wait`]).
    pub fn read_later<T: bytemuck::Pod>(
        &self,
        buf: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<PendingRead<T>, GpuError> {
        self.fault()?;
        let size = (len * std::mem::size_of::<T>()) as u64;
        if size == 0 {
            return Ok(PendingRead::empty());
        }
        let byte_off = (offset * std::mem::size_of::<T>()) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size.next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, byte_off, &staging, 0, size.next_multiple_of(4));
        self.stats.submit();
        let submission = self.queue.submit([enc.finish()]);
        self.stats.readback(size);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        Ok(PendingRead {
            copy: Some(StagedCopy {
                staging,
                size,
                submission,
                mapped: rx,
            }),
            _elements: std::marker::PhantomData,
        })
    }

    /// Block until all submitted work is done.
    pub fn wait(&self) {
        let _ = self.device.poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: None,
        });
    }
}

/// A read-back queued by [`GpuContext::read_later`]: the copy is on the GPU's queue, the
/// host has not waited for it.
#[must_use = "a pending read does nothing until waited for"]
pub struct PendingRead<T> {
    copy: Option<StagedCopy>,
    _elements: std::marker::PhantomData<T>,
}

struct StagedCopy {
    staging: wgpu::Buffer,
    size: u64,
    submission: wgpu::SubmissionIndex,
    mapped: std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
}

impl<T: bytemuck::Pod> PendingRead<T> {
    fn empty() -> Self {
        PendingRead {
            copy: None,
            _elements: std::marker::PhantomData,
        }
    }

    /// Wait for the copy (and the work submitted before it, not after) and return it.
    pub fn wait(self, ctx: &GpuContext) -> Result<Vec<T>, GpuError> {
        let Some(c) = self.copy else {
            return Ok(Vec::new());
        };
        let err = |e: &dyn std::fmt::Display| GpuError::Readback(e.to_string());
        ctx.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(c.submission),
                timeout: None,
            })
            .map_err(|e| err(&e))?;
        c.mapped.recv().map_err(|e| err(&e))?.map_err(|e| err(&e))?;
        let slice = c.staging.slice(..);
        let view = slice.get_mapped_range().map_err(|e| err(&e))?;
        let out: Vec<T> = bytemuck::pod_collect_to_vec(&view[..c.size as usize]);
        drop(view);
        c.staging.unmap();
        // A failed submission leaves the buffer as it was: report the fault, not stale data.
        ctx.fault()?;
        Ok(out)
    }
}

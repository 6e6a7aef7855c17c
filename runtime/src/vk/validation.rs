//! Capturing Khronos validation-layer messages so tests can fail on them.
//!
//! wgpu enables `VK_LAYER_KHRONOS_validation` and `VK_EXT_debug_utils` when
//! the instance has `InstanceFlags::VALIDATION` (and the layer is
//! installed: Debian's `vulkan-validationlayers`), and logs messages through
//! the `log` crate. Parsing log lines would lose the message ID, so
//! [`ValidationCapture::install`] registers a second debug-utils messenger
//! of its own on wgpu's `VkInstance`; its callback stores each warning and
//! error with its ID number and name.
//!
//! Known false positives are filtered by exact message ID, narrowed by a
//! message substring where the ID is a catch-all
//! ([`KNOWN_FALSE_POSITIVES`], each with its reason); everything else at
//! error severity fails [`ValidationCapture::check`]. Warnings are kept
//! ([`ValidationCapture::messages`]) but do not fail.
//!
//! # Safety
//!
//! The messenger's user-data pointer is a `Box` the capture owns; the
//! messenger is destroyed in `Drop` before the box is freed, and the capture
//! holds a `wgpu::Instance` clone so the `VkInstance` outlives the
//! messenger. The callback may run on any thread (Mesa's queue thread), so
//! the sink is a mutex, and the callback never unwinds into C.

use std::ffi::{c_void, CStr};
use std::sync::Mutex;

use ash::vk;
use wgpu_hal::api::Vulkan;

use super::VkError;

/// Severity of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Informational.
    Info,
    /// Suspicious but valid, or a performance warning.
    Warning,
    /// A violated valid-usage rule.
    Error,
}

/// One captured message.
#[derive(Clone, Debug)]
pub struct ValidationMessage {
    /// Severity.
    pub severity: Severity,
    /// `messageIdNumber`.
    pub id_number: i32,
    /// `pMessageIdName` (the VUID, e.g. `VUID-VkBufferCreateInfo-size-00912`).
    pub id_name: String,
    /// The text.
    pub message: String,
}

impl core::fmt::Display for ValidationMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?} [{} ({:#x})] {}", self.severity, self.id_name, self.id_number, self.message)
    }
}

/// A message ignored by [`ValidationCapture::check`], and why.
///
/// Matched by exact `messageIdNumber`; where the ID is a catch-all (the
/// layer's `UNASSIGNED-*` IDs cover many different problems), also by a
/// substring of the text, so that a real error under the same ID still
/// fails.
#[derive(Clone, Copy, Debug)]
pub struct KnownFalsePositive {
    /// `messageIdNumber`.
    pub id_number: i32,
    /// The VUID name, for humans.
    pub id_name: &'static str,
    /// Required substring of the message (`""`: any message with this ID).
    pub message_contains: &'static str,
    /// Why it is not our bug.
    pub reason: &'static str,
}

impl KnownFalsePositive {
    /// Does `m` match this entry?
    pub fn matches(&self, m: &ValidationMessage) -> bool {
        m.id_number == self.id_number && m.message.contains(self.message_contains)
    }
}

/// Messages that are not errors of ours.
pub const KNOWN_FALSE_POSITIVES: &[KnownFalsePositive] = &[
    KnownFalsePositive {
        // Seen on Debian bookworm's vulkan-validationlayers (1.3.239) with
        // every naga-compiled shader.
        id_number: 0x006b_bb14,
        id_name: "UNASSIGNED-CoreValidation-Shader-InconsistentSpirv",
        message_contains: "Invalid source language operand: 10",
        reason: "naga tags its SPIR-V with OpSource WGSL (SourceLanguage 10, added to SPIR-V \
                 in 2023); the layer's bundled SPIRV-Tools predates it and rejects the operand. \
                 The module is otherwise valid; the driver ignores OpSource.",
    },
    KnownFalsePositive {
        // wgpu-hal drops this ID in its own messenger (instance.rs,
        // gfx-rs/wgpu#7696); ours sees it too on newer layers.
        id_number: 0xb210_f7c2_u32 as i32,
        id_name: "VUID-StandaloneSpirv-None-10684",
        message_contains: "",
        reason: "naga's SPIR-V output; wgpu-hal filters this VUID itself as a known naga issue (gfx-rs/wgpu#7696)",
    },
];

struct Sink {
    messages: Mutex<Vec<ValidationMessage>>,
}

/// A debug-utils messenger collecting validation messages; see the module
/// docs.
pub struct ValidationCapture {
    loader: ash::ext::debug_utils::Instance,
    messenger: vk::DebugUtilsMessengerEXT,
    // Invariant: outlives `messenger` (Drop destroys the messenger first).
    sink: Box<Sink>,
    layer_present: bool,
    // Keeps the VkInstance alive until after Drop.
    _instance: wgpu::Instance,
}

impl core::fmt::Debug for ValidationCapture {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ValidationCapture").field("layer_present", &self.layer_present).finish_non_exhaustive()
    }
}

unsafe extern "system" fn callback(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    _types: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    user: *mut c_void,
) -> vk::Bool32 {
    if data.is_null() || user.is_null() {
        return vk::FALSE;
    }
    // SAFETY: the layer passes valid callback data for the duration of the
    // call; `user` is the `Sink` this messenger was registered with, alive
    // until the messenger is destroyed (see the module docs).
    let (cd, sink) = unsafe { (&*data, &*user.cast::<Sink>()) };
    let severity = if severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR) {
        Severity::Error
    } else if severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::WARNING) {
        Severity::Warning
    } else {
        Severity::Info
    };
    // SAFETY: the strings are NUL-terminated or null, valid for the call.
    let (name, text) = unsafe { (cd.message_id_name_as_c_str(), cd.message_as_c_str()) };
    let to_string = |s: Option<&CStr>| s.map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let msg = ValidationMessage {
        severity,
        id_number: cd.message_id_number,
        id_name: to_string(name),
        message: to_string(text),
    };
    // Never unwind into the driver; a poisoned sink still takes messages.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sink.messages.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(msg);
    }));
    vk::FALSE
}

impl ValidationCapture {
    /// Register the messenger on wgpu's instance. Fails with `Unsupported`
    /// when the instance was created without `VK_EXT_debug_utils` (no
    /// `InstanceFlags::VALIDATION`/`DEBUG`, or the extension is missing).
    pub fn install(instance: &wgpu::Instance) -> Result<Self, VkError> {
        // SAFETY: we only read the instance's handles and extension list.
        let hal = unsafe { instance.as_hal::<Vulkan>() }.ok_or(VkError::NotVulkan("instance"))?;
        let shared = hal.shared_instance();
        if !shared.extensions().contains(&ash::ext::debug_utils::NAME) {
            return Err(VkError::Unsupported("VK_EXT_debug_utils on the instance (validation not enabled?)"));
        }
        let entry = shared.entry();
        // SAFETY: plain global query.
        let layers = unsafe { entry.enumerate_instance_layer_properties() }.unwrap_or_default();
        let layer_present =
            layers.iter().any(|l| l.layer_name_as_c_str().is_ok_and(|n| n == c"VK_LAYER_KHRONOS_validation"));
        let loader = ash::ext::debug_utils::Instance::new(entry, shared.raw_instance());
        let sink = Box::new(Sink { messages: Mutex::new(Vec::new()) });
        let info = vk::DebugUtilsMessengerCreateInfoEXT::default()
            .message_severity(
                vk::DebugUtilsMessageSeverityFlagsEXT::WARNING | vk::DebugUtilsMessageSeverityFlagsEXT::ERROR,
            )
            .message_type(
                vk::DebugUtilsMessageTypeFlagsEXT::GENERAL
                    | vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION
                    | vk::DebugUtilsMessageTypeFlagsEXT::PERFORMANCE,
            )
            .pfn_user_callback(Some(callback))
            .user_data(core::ptr::from_ref::<Sink>(&sink).cast_mut().cast());
        // SAFETY: debug_utils is enabled on this instance (checked); the
        // user data outlives the messenger (invariant of `sink`).
        let messenger = unsafe { loader.create_debug_utils_messenger(&info, None) }
            .map_err(VkError::vk("vkCreateDebugUtilsMessengerEXT"))?;
        Ok(Self { loader, messenger, sink, layer_present, _instance: instance.clone() })
    }

    /// Whether `VK_LAYER_KHRONOS_validation` is installed (wgpu enables it
    /// when present; without it only loader/driver messages arrive).
    pub fn layer_present(&self) -> bool {
        self.layer_present
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<ValidationMessage> {
        self.sink.messages.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Forget the messages so far.
    pub fn clear(&self) {
        self.sink.messages.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// Errors not in [`KNOWN_FALSE_POSITIVES`].
    pub fn errors(&self) -> Vec<ValidationMessage> {
        self.messages()
            .into_iter()
            .filter(|m| m.severity == Severity::Error && !KNOWN_FALSE_POSITIVES.iter().any(|k| k.matches(m)))
            .collect()
    }

    /// `Err` listing every unexpected error.
    pub fn check(&self) -> Result<(), String> {
        let errors = self.errors();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
        }
    }
}

impl Drop for ValidationCapture {
    fn drop(&mut self) {
        // SAFETY: created by `install` from this loader; the instance is
        // alive (`_instance`); `sink` is freed only after this returns.
        unsafe { self.loader.destroy_debug_utils_messenger(self.messenger, None) };
    }
}

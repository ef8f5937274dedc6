//! Write Barnabas plugins in Rust.
//!
//! A plugin is one type that implements [`Plugin`], exported with [`export_plugin!`], built with
//! `cargo build --release --target wasm32-wasip2`:
//!
//! ```ignore
//! use barnabas_plugin_sdk::{export_plugin, Message, NoConfig, Plugin, Verdict};
//!
//! struct Upper;
//!
//! impl Plugin for Upper {
//!     type Config = NoConfig;
//!     fn new(_: NoConfig) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn handle(&self, msg: Message) -> Result<Verdict, String> {
//!         let mut out = msg.into_output();
//!         out.payload = out.payload.to_ascii_uppercase();
//!         Ok(Verdict::Forward(vec![out]))
//!     }
//! }
//!
//! export_plugin!(Upper);
//! ```
//!
//! The contract itself is `wit/plugin.wit`, shipped inside this crate.
#![deny(missing_docs)]

use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod bindings {
    //! Generated from `wit/plugin.wit`.
    #![allow(missing_docs, clippy::too_many_arguments)]
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_barnabas_plugin",
        default_bindings_module: "$crate::bindings",
    });
}

pub use bindings::barnabas::plugin::types::{Header, Message, Output, Protocol, Verdict};

/// The version of the WIT contract this SDK speaks. The host names it when it refuses a plugin.
pub const WIT_VERSION: &str = "0.1.0";

/// A `Config` for plugins that take none: accepts whatever `config` holds and ignores it.
pub type NoConfig = serde::de::IgnoredAny;

/// A Barnabas plugin.
///
/// One value is built per instance with [`Plugin::new`] from the plugin's `config` in routes.yaml;
/// the host reuses an instance for many messages and builds a fresh one after a trap.
pub trait Plugin: Sized + 'static {
    /// The plugin's settings, deserialised from its `config` (JSON data model).
    type Config: DeserializeOwned;

    /// Builds the plugin from its settings. An error fails the load with this message.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Decides what becomes of one message. An `Err` makes the message follow the route's
    /// `on_error` policy, as a trap would.
    fn handle(&self, msg: Message) -> Result<Verdict, String>;
}

impl Message {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The value of the first header called `name`, if it is UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The topic split at `/` into its levels.
    pub fn topic_levels(&self) -> impl Iterator<Item = &str> {
        self.topic.split('/')
    }

    /// This message, unchanged, as an output to the route's current output.
    pub fn into_output(self) -> Output {
        Output {
            name: None,
            topic: self.topic,
            headers: self.headers,
            key: self.key,
            payload: self.payload,
        }
    }

    /// Forward this message unchanged.
    pub fn forward(self) -> Verdict {
        Verdict::Forward(vec![self.into_output()])
    }
}

impl Output {
    /// Sends this output to the route's named output `name` instead of the default one.
    pub fn to(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Sets header `name`, replacing every earlier header of that name.
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.headers.retain(|h| h.name != name);
        self.headers.push(Header {
            name: name.to_string(),
            value: value.into(),
        });
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_slice())
}

/// Writes to the proxy's log, tagged with the plugin's name.
pub mod log {
    use crate::bindings::barnabas::plugin::host::{self, Level};

    /// Logs at trace level.
    pub fn trace(message: &str) {
        host::log(Level::Trace, message)
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        host::log(Level::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        host::log(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        host::log(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        host::log(Level::Error, message)
    }
}

/// The plumbing behind [`export_plugin!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    pub use bindings::Guest;

    /// Reads the plugin's config from the host and builds the plugin. Also sends panic messages
    /// to the proxy's log (the host discards the guest's stderr).
    pub fn build<P: Plugin>() -> Result<P, String> {
        std::panic::set_hook(Box::new(|info| crate::log::error(&info.to_string())));
        let json = bindings::barnabas::plugin::host::config();
        let config: P::Config =
            serde_json::from_str(&json).map_err(|e| format!("invalid plugin config: {e}"))?;
        P::new(config)
    }
}

/// Exports a [`Plugin`] implementation as this component's plugin.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __BARNABAS_PLUGIN: ::std::cell::OnceCell<$plugin> =
                    const { ::std::cell::OnceCell::new() };
            }

            struct __BarnabasGuest;

            impl $crate::__private::Guest for __BarnabasGuest {
                fn init() -> ::std::result::Result<(), ::std::string::String> {
                    let plugin = $crate::__private::build::<$plugin>()?;
                    __BARNABAS_PLUGIN.with(|cell| {
                        // A second init on the same instance keeps the first value.
                        let _ = cell.set(plugin);
                    });
                    Ok(())
                }

                fn handle(
                    msg: $crate::Message,
                ) -> ::std::result::Result<$crate::Verdict, ::std::string::String> {
                    __BARNABAS_PLUGIN.with(|cell| {
                        if cell.get().is_none() {
                            let plugin = $crate::__private::build::<$plugin>()?;
                            let _ = cell.set(plugin);
                        }
                        match cell.get() {
                            Some(plugin) => <$plugin as $crate::Plugin>::handle(plugin, msg),
                            None => Err("plugin is not initialised".to_string()),
                        }
                    })
                }
            }

            $crate::bindings::__export_barnabas_plugin!(__BarnabasGuest with_types_in $crate::bindings);
        };
    };
}

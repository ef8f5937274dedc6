//! Write Barnabas plugins in Rust.
//!
//! A plugin is one type that implements [`Plugin`], exported with [`export_plugin!`], built with
//! `cargo build --release --target wasm32-wasip2`:
//!
//! ```
//! use barnabas_plugin_sdk::{export_plugin, Message, NoConfig, Output, Plugin, Verdict};
//!
//! struct Upper;
//!
//! impl Plugin for Upper {
//!     type Config = NoConfig;
//!     fn new(_: NoConfig) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn handle(&self, msg: Message) -> Result<Verdict, String> {
//!         let out = Output::keep().with_payload(msg.payload.to_ascii_uppercase());
//!         Ok(Verdict::Forward(vec![out]))
//!     }
//! }
//!
//! export_plugin!(Upper);
//! ```
//!
//! A plugin receives a [`Message`] (topic, QoS, key, payload) and asks for the rest only if it
//! needs it: [`Message::header`], [`Message::headers`], [`Message::source`] (protocol,
//! direction, client id, the authenticated identity, the route). It answers with a [`Verdict`];
//! each [`Output`] of a forward says what it changes, and everything it does not name stays as
//! it was, so a plugin pays only for what it reads and what it changes.
//!
//! The contract itself is `wit/plugin.wit`, shipped inside this crate.
//!
//! # Testing
//!
//! A plugin's unit tests run natively with `cargo test`: [`testing`] builds the plugin from a
//! JSON config as the proxy does and sets the headers and source a message reports; [`log`]
//! writes to standard error. `barnabas plugin test` then runs the built component, in the
//! proxy's sandbox, on messages from a file.
//!
//! ```
//! use barnabas_plugin_sdk::{testing, Output, Plugin, Verdict};
//! # use barnabas_plugin_sdk::{Message, NoConfig};
//! # struct Upper;
//! # impl Plugin for Upper {
//! #     type Config = NoConfig;
//! #     fn new(_: NoConfig) -> Result<Self, String> { Ok(Upper) }
//! #     fn handle(&self, msg: Message) -> Result<Verdict, String> {
//! #         Ok(Verdict::Forward(vec![Output::keep().with_payload(msg.payload.to_ascii_uppercase())]))
//! #     }
//! # }
//! let plugin: Upper = testing::build("null").unwrap();
//! let verdict = plugin.handle(testing::message("a/b", "hi")).unwrap();
//! assert_eq!(verdict, Verdict::Forward(vec![Output::keep().with_payload("HI")]));
//! ```
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
        additional_derives: [PartialEq],
    });
}

pub use bindings::barnabas::plugin::types::{
    Direction, Header, KeyEdit, Message, Output, Protocol, Source, Verdict,
};

/// The version of the WIT contract this SDK speaks. The host names it when it refuses a plugin.
pub const WIT_VERSION: &str = "0.2.0";

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
    /// The value of the first header called `name`, asked of the host (headers are not copied
    /// into the plugin unless it asks).
    ///
    /// ```text
    /// let tenant = msg.header("tenant");   // Option<Vec<u8>>
    /// ```
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        current::header_value(name)
    }

    /// The value of the first header called `name`, if it is UTF-8 text.
    ///
    /// ```
    /// # use barnabas_plugin_sdk::testing;
    /// testing::set_headers(&[("tenant", "acme")]);
    /// let msg = testing::message("telemetry/dev1", "{}");
    /// assert_eq!(msg.header_str("tenant").as_deref(), Some("acme"));
    /// assert_eq!(msg.header_str("site"), None);
    /// ```
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// Every header, in order.
    pub fn headers(&self) -> Vec<Header> {
        current::headers()
    }

    /// Where the message came from: protocol, direction, client id, the identity the client
    /// logged in as, and the route running the plugin.
    pub fn source(&self) -> Source {
        current::origin()
    }

    /// The identity the client logged in as (a user name, or the name its TLS certificate
    /// gives); `None` for an anonymous client.
    pub fn identity(&self) -> Option<String> {
        self.source().identity
    }

    /// The topic split at `/` into its levels.
    ///
    /// ```
    /// # use barnabas_plugin_sdk::testing;
    /// let msg = testing::message("telemetry/acme/dev1", "");
    /// assert_eq!(msg.topic_levels().last(), Some("dev1"));
    /// ```
    pub fn topic_levels(&self) -> impl Iterator<Item = &str> {
        self.topic.split('/')
    }

    /// Forward this message unchanged (to the output chosen so far).
    ///
    /// ```
    /// # use barnabas_plugin_sdk::{testing, Output, Verdict};
    /// let verdict = testing::message("a/b", "x").forward();
    /// assert_eq!(verdict, Verdict::Forward(vec![Output::keep()]));
    /// ```
    pub fn forward(self) -> Verdict {
        Verdict::Forward(vec![Output::keep()])
    }
}

impl Output {
    /// An output that changes nothing: the message as it came, to the output chosen so far. Name
    /// what changes with the other methods.
    ///
    /// ```text
    /// let mut out = Output::keep();
    /// out.set_header("site", "plant-7");
    /// out.set_payload(new_body);
    /// Ok(Verdict::Forward(vec![out]))
    /// ```
    pub fn keep() -> Output {
        Output {
            name: None,
            topic: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            key: KeyEdit::Keep,
            payload: None,
        }
    }

    /// Sends this output to the route's named output `name` instead of the default one
    /// (`outputs: { alerts: "kafka:alerts" }` in routes.yaml). A name the route does not define
    /// makes the message follow the route's `on_error`.
    ///
    /// ```
    /// # use barnabas_plugin_sdk::{Output, Verdict};
    /// // The message goes on as it is, and a copy goes to `alerts`.
    /// let verdict = Verdict::Forward(vec![Output::keep(), Output::keep().to("alerts")]);
    /// ```
    pub fn to(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Sets the topic (the route's `to` template is filled from it).
    pub fn set_topic(&mut self, topic: impl Into<String>) {
        self.topic = Some(topic.into());
    }

    /// [`Output::set_topic`], by value.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.set_topic(topic);
        self
    }

    /// Sets the payload.
    pub fn set_payload(&mut self, payload: impl Into<Vec<u8>>) {
        self.payload = Some(payload.into());
    }

    /// [`Output::set_payload`], by value.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.set_payload(payload);
        self
    }

    /// Sets header `name`, replacing every header of that name. Values are bytes: a `&str`, a
    /// `String` or a `Vec<u8>`.
    ///
    /// ```
    /// # use barnabas_plugin_sdk::Output;
    /// let mut out = Output::keep();
    /// out.set_header("site", "plant-7");
    /// out.set_header("site", "plant-8"); // replaces the first
    /// assert_eq!(out.set_headers.len(), 1);
    /// assert_eq!(out.set_headers[0].value, b"plant-8");
    /// ```
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.set_headers.retain(|h| h.name != name);
        self.set_headers.push(Header {
            name: name.to_string(),
            value: value.into(),
        });
    }

    /// [`Output::set_header`], by value.
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.set_header(name, value);
        self
    }

    /// Removes every header called `name` (one set on this output too).
    pub fn remove_header(&mut self, name: &str) {
        self.set_headers.retain(|h| h.name != name);
        self.remove_headers.push(name.to_string());
    }

    /// Sets the Kafka key.
    pub fn set_key(&mut self, key: impl Into<Vec<u8>>) {
        self.key = KeyEdit::Set(key.into());
    }

    /// [`Output::set_key`], by value.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.set_key(key);
        self
    }

    /// Sends the output without a key.
    pub fn clear_key(&mut self) {
        self.key = KeyEdit::Clear;
    }
}

/// Writes to the proxy's log, tagged with the plugin's name. In a native `cargo test` of a plugin,
/// lines go to standard error instead.
pub mod log {
    pub use crate::bindings::barnabas::plugin::host::Level;

    /// Logs `message` at `level`.
    pub fn write(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        crate::bindings::barnabas::plugin::host::log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("[{level:?}] {message}");
    }

    /// Logs at trace level.
    pub fn trace(message: &str) {
        write(Level::Trace, message)
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        write(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

/// The message being handled, beyond what `handle` is given: asked of the host inside the proxy,
/// and of [`testing`]'s per-thread values in a native test.
mod current {
    #[cfg(not(target_arch = "wasm32"))]
    use super::{Header, Source};

    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings::barnabas::plugin::current::{header_value, headers, origin};

    #[cfg(not(target_arch = "wasm32"))]
    pub fn header_value(name: &str) -> Option<Vec<u8>> {
        crate::testing::CURRENT.with_borrow(|c| {
            c.headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.value.clone())
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn headers() -> Vec<Header> {
        crate::testing::CURRENT.with_borrow(|c| c.headers.clone())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn origin() -> Source {
        crate::testing::CURRENT.with_borrow(|c| c.source.clone())
    }
}

/// Unit tests of a plugin, natively (`cargo test`, no Wasm, no proxy): build the plugin from its
/// config as the proxy would, and give the message headers and a source.
///
/// ```
/// use barnabas_plugin_sdk::testing;
///
/// let msg = testing::message("telemetry/acme/dev1", r#"{"temperature":42}"#);
/// testing::set_headers(&[("tenant", "acme")]);
/// assert_eq!(msg.header_str("tenant").as_deref(), Some("acme"));
/// assert_eq!(msg.source().client_id, "test-client");
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;

    use super::{Direction, Header, Message, Plugin, Protocol, Source};

    /// What [`Message::header`], [`Message::headers`] and [`Message::source`] return on this
    /// thread.
    pub(crate) struct Current {
        pub(crate) headers: Vec<Header>,
        pub(crate) source: Source,
    }

    thread_local! {
        pub(crate) static CURRENT: RefCell<Current> = RefCell::new(Current {
            headers: Vec::new(),
            source: default_source(),
        });
    }

    /// The source a test message has unless [`set_source`] says otherwise: an MQTT client
    /// `test-client`, anonymous, inbound on route `test`.
    pub fn default_source() -> Source {
        Source {
            protocol: Protocol::Mqtt,
            direction: Direction::Inbound,
            client_id: "test-client".to_string(),
            identity: None,
            route: "test".to_string(),
        }
    }

    /// A QoS 1 message on `topic` with `payload`, no key.
    pub fn message(topic: &str, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            topic: topic.to_string(),
            qos: 1,
            key: None,
            payload: payload.into(),
        }
    }

    /// Sets the headers of the message under test, on this thread.
    pub fn set_headers(headers: &[(&str, &str)]) {
        CURRENT.with_borrow_mut(|c| {
            c.headers = headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.to_string(),
                    value: value.as_bytes().to_vec(),
                })
                .collect();
        });
    }

    /// Sets where the message under test came from, on this thread.
    pub fn set_source(source: Source) {
        CURRENT.with_borrow_mut(|c| c.source = source);
    }

    /// Builds plugin `P` from its `config` written as JSON, exactly as the proxy does from
    /// routes.yaml (same parsing, same error text).
    pub fn build<P: Plugin>(config_json: &str) -> Result<P, String> {
        P::new(crate::__private::parse_config::<P>(config_json)?)
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
        #[cfg(target_arch = "wasm32")]
        let json = bindings::barnabas::plugin::host::config();
        #[cfg(not(target_arch = "wasm32"))]
        let json = String::from("null");
        P::new(parse_config::<P>(&json)?)
    }

    /// The plugin's config from its JSON text. The error names what is wrong without a position
    /// in the JSON text, which the author never wrote: the proxy reports it at the `config:` key
    /// of routes.yaml.
    pub fn parse_config<P: Plugin>(json: &str) -> Result<P::Config, String> {
        serde_json::from_str(json).map_err(|e| {
            let text = e.to_string();
            let cause = match text.rfind(" at line ") {
                Some(at) => &text[..at],
                None => &text,
            };
            format!("invalid plugin config: {cause}")
        })
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

//! SIGHUP: the config is read again and, when valid, applied to new
//! sessions and new deliveries. Sessions in progress keep the settings
//! they started with (each holds its own `Rc`); mail in the queue keeps the
//! next hop it was given when it was accepted.

use std::net::SocketAddr;
use std::rc::Rc;

use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Interest, Token};

use super::{bind, Bound, Secrets, Server, LISTENER_BASE, MAX_LISTENERS};
use crate::config::{Config, SourceRoutes};
use crate::smtp::server::Settings;

/// Reads the config and what it names (certificates, users) again: the
/// same code `serve` started with, so a reload sees what a restart would.
pub type Reloader = Box<dyn FnMut() -> Result<(Config, Secrets), String>>;

impl Server {
    /// Where a reload reads its config from; without one SIGHUP only logs.
    pub fn set_reloader(&mut self, reloader: Reloader) {
        self.reloader = Some(reloader);
    }

    /// A SIGHUP arrived: reload, or keep running on the old config and say
    /// exactly why not.
    pub(super) fn reload(&mut self) {
        let Some(reloader) = self.reloader.as_mut() else {
            return warn!("SIGHUP: nothing to reload from");
        };
        crate::service::reloading();
        info!("SIGHUP: reloading the config");
        let loaded = reloader();
        let result = loaded.and_then(|(config, secrets)| self.apply_reload(config, secrets));
        match result {
            Ok(()) => {
                self.metrics.reload(true);
                info!("reloaded: new sessions and deliveries use the new config");
            }
            Err(e) => {
                self.metrics.reload(false);
                error!("reload refused, still running on the previous config: {e}");
            }
        }
        crate::service::ready();
    }

    fn apply_reload(&mut self, config: Config, secrets: Secrets) -> Result<(), String> {
        if config.queue != self.queue_path {
            return Err(format!(
                "queue: changing the queue file ({} to {}) needs a restart",
                self.queue_path.display(),
                config.queue.display()
            ));
        }
        if config.metrics_listen != self.metrics_listen {
            return Err("metrics.listen: changing it needs a restart".to_string());
        }
        // Bind what is new before changing anything: a port in use fails
        // the whole reload, not half of it.
        let wanted: Vec<(SocketAddr, bool)> = listen_addrs(&config);
        let mut opened = Vec::new();
        for &(addr, implicit_tls) in &wanted {
            let known = self
                .listeners
                .iter()
                .any(|(_, l)| l.configured == addr && l.implicit_tls == implicit_tls);
            if !known {
                let socket = bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                opened.push(Bound {
                    socket: TcpListener::from_std(socket),
                    implicit_tls,
                    configured: addr,
                });
            }
        }
        if self.listeners.len() + opened.len() > MAX_LISTENERS {
            return Err(format!("more than {MAX_LISTENERS} listeners"));
        }
        if self.shutdown.is_none() {
            self.close_listeners_not_in(&wanted);
            for bound in opened {
                self.add_listener(bound);
            }
        }
        self.apply_config(&config, secrets);
        Ok(())
    }

    fn close_listeners_not_in(&mut self, wanted: &[(SocketAddr, bool)]) {
        let gone: Vec<usize> = self
            .listeners
            .iter()
            .filter(|(_, l)| !wanted.contains(&(l.configured, l.implicit_tls)))
            .map(|(k, _)| k)
            .collect();
        for key in gone {
            let mut bound = self.listeners.remove(key);
            let _ = self.poll.registry().deregister(&mut bound.socket);
            match bound.socket.local_addr() {
                Ok(addr) => info!("stopped listening on {addr}; its sessions go on"),
                Err(_) => info!("stopped listening on {}", bound.configured),
            }
        }
    }

    pub(super) fn add_listener(&mut self, mut bound: Bound) {
        let entry = self.listeners.vacant_entry();
        let token = Token(LISTENER_BASE + entry.key());
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut bound.socket, token, Interest::READABLE)
        {
            return error!("cannot watch the listener on {}: {e}", bound.configured);
        }
        let key = entry.key();
        if let Ok(addr) = bound.socket.local_addr() {
            info!("listening on {addr}");
        }
        entry.insert(bound);
        // Connections that came before the registration.
        self.accept(key);
    }

    /// Everything the config decides for new sessions and deliveries;
    /// also how `new` starts.
    pub(super) fn apply_config(&mut self, config: &Config, secrets: Secrets) {
        let mut settings = Settings::new(config);
        settings.starttls = secrets.tls.server.is_some();
        settings.users = secrets.users;
        settings.dkim = secrets.dkim;
        self.settings = Rc::new(settings);
        self.tls = secrets.tls;
        self.route_options = super::outbound::route_options(config);
        self.idle_timeout = config.timeouts.server_idle;
        self.max_connections = config.max_connections;
        self.max_connections_per_ip = config.max_connections_per_ip;
        self.limits.out_total = config.outbound_max_connections;
        self.limits.out_per_host = config.outbound_max_connections_per_host;
        self.limits.chunking = config.outbound_chunking;
        // Jobs already waiting on a policy look still get it; new jobs
        // follow the switch.
        self.sts.on = config.outbound_mta_sts;
        self.retry = config.retry.clone();
        self.timeouts = config.timeouts.clone();
        self.maildir = config.maildir.clone();
        self.set_shaping(config.shaping.clone());
        self.honor_routes = config.source_routes == SourceRoutes::Honor;
        if !self.resolver.set_servers(config.dns_servers.clone()) {
            warn!("dns.servers: none configured; the previous servers stay in use");
        }
    }
}

/// The listeners a config asks for: plain ones, then implicit-TLS ones.
pub fn listen_addrs(config: &Config) -> Vec<(SocketAddr, bool)> {
    let plain = config.listen.iter().map(|a| (*a, false));
    let implicit = config.tls.implicit_listen.iter().map(|a| (*a, true));
    plain.chain(implicit).collect()
}

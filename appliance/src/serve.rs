//! `outpost serve`: opens the data directory and database, starts the writer,
//! the QUIC listener, the admin API and the timers, and shuts them down in
//! order (stop accepting, drain sessions and ack what is durable, stop the
//! writer after it committed everything queued).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_storage::StoreOptions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::alerts;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::ingest::live::LiveSessions;
use crate::ingest::writer::{self, WriterOptions};
use crate::ingest::{IngestCtx, server};
use crate::jobs;
use crate::metrics::Metrics;
use crate::site::{self, DataDir};

/// Runs the appliance until `shutdown` is cancelled.
pub async fn run(data: DataDir, cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    cfg.validate()?;
    // Before anything is created or opened: a data directory written by a
    // newer Outpost is refused (downgrade), an older one is upgraded.
    crate::format::check_and_upgrade(&data.0)?;
    let keys = site::init_or_load(&data)?;
    let fingerprint = keys.ca.fingerprint();
    // The fingerprint installers pin, alone on stdout.
    println!("{fingerprint}");
    if keys.created {
        info!(%fingerprint, data = %data.0.display(), "created the site CA and admin token");
    }
    let store = crate::db::open(
        &data.db(),
        &StoreOptions {
            durability: cfg.storage.durability,
            block_cache_bytes: cfg.storage.block_cache_bytes,
            rollup_bucket_ms: cfg.ingest.rollup_bucket.as_millis() as u64,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("opening the database in {}", data.db().display()))?;
    let metrics = Arc::new(Metrics::new());
    let tracker = TaskTracker::new();
    let uplink = outpost_uplink::service::Uplink::new(
        store.clone(),
        &data.0,
        cfg.uplink.options(),
        metrics.uplink.clone(),
        shutdown.clone(),
        tracker.clone(),
    )
    .context("opening the uplink outbox")?;
    // The console's view of the site, loaded before the writer and the
    // alert engine start: they feed it from then on.
    let mut hub = outpost_console::LiveHub::new(outpost_console::LiveConfig {
        max_subscribers: cfg.console.max_live_subscribers.max(1),
        ..Default::default()
    });
    hub.metrics = metrics.console_live.clone();
    let site = crate::console::Site::load(
        store.clone(),
        uplink.clone(),
        cfg.console
            .site_name
            .clone()
            .unwrap_or_else(crate::console::hostname),
        hub,
        crate::console::Freshness::default(),
    )
    .context("loading the console's device index")?;
    // Alerting first: the writer feeds it.
    let notify = alerts::notify::spawn(
        store.clone(),
        metrics.clone(),
        cfg.alerts.retry_policy(),
        shutdown.clone(),
        &tracker,
    )?;
    let mut engine = alerts::engine::Engine::load(
        store.clone(),
        metrics.clone(),
        notify.clone(),
        outpost_storage::now_ms(),
    )
    .context("loading alert rules and open alerts")?;
    {
        let site = site.clone();
        engine.set_observer(Arc::new(move |a, before| site.on_alert(a, before)));
    }
    let alerts = alerts::engine::spawn(engine, cfg.alerts.eval_queue, shutdown.clone(), &tracker)?;
    let (a1, a2) = (alerts.clone(), alerts.clone());
    let (s1, s2) = (site.clone(), site.clone());
    let (writer, writer_thread) = writer::spawn(
        store.clone(),
        WriterOptions {
            max_batch_records: cfg.ingest.max_batch_records,
            queue_groups: cfg.ingest.queue_groups,
            queue_max_bytes: cfg.ingest.queue_max_bytes,
            offline_grace: cfg.offline_grace,
            rollup_settle: cfg.ingest.rollup_settle,
            limits: cfg.ingest.limits(),
            faults: None,
            commit_window: cfg.ingest.commit_window,
            nice: Some(cfg.ingest.writer_nice),
            handshake_rate: Some(cfg.admission.handshake_rate),
            agent_reconnect_max: cfg.admission.agent_reconnect_max,
        },
        metrics.clone(),
        writer::Sinks {
            transitions: Box::new(move |ts| {
                s1.on_transitions(ts);
                a1.status(ts.to_vec());
            }),
            samples: Box::new(move |batch| {
                s2.on_samples(&batch, outpost_storage::now_ms());
                a2.samples(batch);
            }),
        },
    )?;

    let listener = server::bind(
        cfg.quic_listen,
        keys.server_chain.clone(),
        keys.server_key.clone_key(),
        keys.ca.cert_der().clone(),
        &keys.reset_secret,
        cfg.udp_buffer_bytes,
        cfg.quic_endpoints,
        cfg.quic_segmentation_offload,
        &metrics,
    )?;
    let live = Arc::new(LiveSessions::default());
    let (commands, commands_thread) = crate::commands::service::CommandService::start(
        store.clone(),
        metrics.clone(),
        crate::commands::service::CommandOptions::default(),
    )
    .context("loading the command queue")?;
    let (files, files_thread) = crate::files::service::FileService::start(
        store.clone(),
        metrics.clone(),
        &data.0.join("files"),
        cfg.files,
        commands.clone(),
    )
    .context("opening the file transfer store")?;
    // Patch assessment (issue 14): its own worker thread applies the
    // package reports the writer stored and assesses devices.
    let patches = crate::patches::PatchService::open(
        store.clone(),
        &data.0,
        metrics.clone(),
        cfg.patches.policy.clone(),
    )
    .context("loading the patch catalog and assessments")?;
    {
        let alerts = alerts.clone();
        patches.set_alert_sink(Box::new(move |batch| alerts.samples(batch)));
    }
    // A device whose package report cannot be applied gets a full scan
    // asked for (`ScanPackages` through the command service).
    patches.set_scan_requester(
        Arc::new(crate::patches::full_scan::FullScanRequester::new(
            commands.clone(),
            metrics.clone(),
        )),
        tokio::runtime::Handle::current(),
    );
    // Findings an older central did not take go again once it reads them.
    patches.set_findings_resend(uplink.findings_resend());
    {
        // Reports name the site (its name at central once joined).
        let site = site.clone();
        patches.set_site_name(Box::new(move || site.identity().name));
    }
    let patches_thread = patches
        .spawn_worker(Duration::from_secs(1), shutdown.clone())
        .context("starting the patch worker")?;
    // Patch deployment (issue 15): the orchestrator installs through the
    // device link and hears from it through its status port.
    let (status_port, status_rx) = crate::deploy::orchestrator::status_channel(metrics.clone());
    let (device_link, device_link_worker) = crate::deploy::device::DeviceLink::start(
        commands.clone(),
        store.clone(),
        metrics.clone(),
        status_port,
        Duration::from_secs(1),
        shutdown.clone(),
    )
    .context("starting the deployment device link")?;
    let installer: Arc<dyn crate::deploy::Installer> = Arc::new(device_link);
    let patch_view: Arc<dyn crate::deploy::approvals::MissingPatches> = Arc::new(patches.clone());
    let site_cache: Arc<std::sync::OnceLock<Arc<crate::cache::Cache>>> = Default::default();
    let orchestrator = Arc::new(crate::deploy::orchestrator::Orchestrator::new(
        store.clone(),
        installer,
        Arc::new(crate::deploy::orchestrator::SiteEnv {
            store: store.clone(),
            patches: patch_view.clone(),
            alerts: {
                let alerts = alerts.clone();
                Some(Box::new(move |batch| alerts.samples(batch)))
            },
            cache: site_cache.clone(),
        }),
        metrics.clone(),
        crate::deploy::orchestrator::InstallOptions {
            proxy: cfg.deploy.proxy.clone(),
            reboot: cfg.deploy.reboot,
            snapshot: cfg.deploy.snapshot,
            ..Default::default()
        },
    ));
    let ctx = Arc::new(IngestCtx {
        store: store.clone(),
        ca: keys.ca,
        writer: writer.clone(),
        metrics: metrics.clone(),
        live: live.clone(),
        max_frame_bytes: cfg.max_frame_bytes,
        session_max_bytes: cfg.ingest.session_max_bytes,
        shutdown: shutdown.clone(),
        remote: Arc::new(commands.clone()),
    });

    let admin = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding the admin API on {}", cfg.admin_listen))?;
    let admin_addr = admin.local_addr()?;
    std::fs::write(data.admin_addr(), format!("{admin_addr}\n")).context("writing admin.addr")?;
    {
        // Central's commands come down the uplink: the adapter queues them
        // in the command service under central's ids.
        let (port, end) = outpost_uplink::downlink::DownlinkPort::pair(64);
        uplink.attach_downlink(port);
        // Central's deployment orders go to their own adapter (protocol 5).
        let (deploy_tx, deploy_rx) = tokio::sync::mpsc::unbounded_channel();
        tracker.spawn(crate::deploy::central::run(
            crate::deploy::central::CentralDeploy {
                store: store.clone(),
                patches: patch_view.clone(),
                orchestrator: orchestrator.clone(),
                metrics: metrics.uplink.clone(),
                on_tags: {
                    let (alerts, site) = (alerts.clone(), site.clone());
                    Some(Arc::new(move || {
                        alerts.reload();
                        // The console's device list shows them on its next page.
                        site.mark_stale();
                    }))
                },
            },
            deploy_rx,
            end.frames.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(crate::downlink::run_with_files(
            commands.clone(),
            Some(files.clone()),
            metrics.uplink.clone(),
            end,
            Some(deploy_tx),
            shutdown.clone(),
        ));
    }
    // Where agents enroll (`outpost agent-installer` prints its port).
    std::fs::write(
        data.0.join(crate::installer::QUIC_ADDR_FILE),
        format!("{}\n", listener.local_addr()?),
    )
    .context("writing quic.addr")?;
    uplink.start().context("starting the uplink")?;
    let auth = Arc::new(crate::users::auth::Auth::new(
        store.clone(),
        metrics.clone(),
        keys.admin_token.clone(),
        crate::users::auth::AuthOptions::default(),
    ));
    let console = Arc::new(outpost_console::Console {
        backend: Arc::new(crate::console::SiteConsole {
            site: site.clone(),
            auth: auth.clone(),
            alerts: alerts.clone(),
            sessions: live.clone(),
            commands: Some(commands.clone()),
            patches: Some(patches.clone()),
            deployments: Some(crate::deploy::api::DeployApi {
                store: store.clone(),
                patches: patch_view.clone(),
                orchestrator: orchestrator.clone(),
            }),
            files: Some(files.clone()),
        }),
        csrf: outpost_console::CsrfKey::random(),
        metrics: metrics.console.clone(),
    });
    let api_state = Arc::new(ApiState {
        store: store.clone(),
        metrics: metrics.clone(),
        auth,
        writer: writer.clone(),
        live: live.clone(),
        alerts,
        notify,
        started: Instant::now(),
        uplink: uplink.clone(),
        commands: commands.clone(),
        on_tags: {
            let site = site.clone();
            Some(Arc::new(move |d, tags: &[String]| site.on_tags(d, tags)))
        },
    });
    let tracker = TaskTracker::new();
    let cache = if cfg.cache.enabled {
        let (c, addr) = crate::cache::start(
            &data.0,
            &cfg,
            store.clone(),
            metrics.clone(),
            &tracker,
            shutdown.clone(),
        )
        .await?;
        // Where the cache listens (for scripts and tests; port 0 picks one).
        std::fs::write(data.0.join("cache.addr"), format!("{addr}\n"))
            .context("writing cache.addr")?;
        // Deployments prefetch and pin their packages in it.
        let _ = site_cache.set(c.clone());
        Some((c, addr))
    } else {
        None
    };
    info!(
        quic = %listener.local_addr()?,
        quic_endpoints = listener.endpoints.len(),
        cache = ?cache.as_ref().map(|(_, a)| *a),
        admin = %admin_addr,
        durability = ?cfg.storage.durability,
        "appliance ready"
    );
    // systemd (Type=notify): the listeners are bound and the database is
    // open. Not under systemd (NOTIFY_SOCKET unset) this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "telling systemd the appliance is ready");
    }

    let conns = TaskTracker::new();
    let admission = Arc::new(crate::ingest::admission::Admission::new(
        &cfg.admission,
        metrics.clone(),
    ));
    server::spawn_accept_loops(
        &listener,
        ctx.clone(),
        admission,
        cfg.max_connections,
        conns.clone(),
        &tracker,
    );
    {
        let sd = shutdown.clone();
        // The file and patch routes ride beside the cache's (authorised alike).
        let mut extra = crate::files::api::router(files.clone())
            .merge(crate::patches::api::router(patches.clone()))
            .merge(crate::deploy::api::router(crate::deploy::api::DeployApi {
                store: store.clone(),
                patches: patch_view.clone(),
                orchestrator: orchestrator.clone(),
            }));
        if let Some((c, _)) = &cache {
            extra = extra.merge(crate::cache::api::router(c.clone()));
        }
        let router = api::admin_router(api_state.clone(), Some(extra), Some(console));
        tracker.spawn(async move {
            // The peer address feeds the login limits.
            let r = axum::serve(
                admin,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move { sd.cancelled().await })
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }
    tracker.spawn(crate::patches::feed::fetch_loop(
        patches.clone(),
        cfg.patches.clone(),
        shutdown.clone(),
    ));
    crate::deploy::orchestrator::spawn(
        orchestrator.clone(),
        patch_view.clone(),
        status_rx,
        cfg.deploy.tick_interval,
        shutdown.clone(),
        &tracker,
    );
    tracker.spawn(jobs::writer_ticks(writer.clone(), shutdown.clone()));
    // Open command pages follow the command service through the live hub.
    tracker.spawn(crate::console::commands::live_loop(
        commands.clone(),
        site.clone(),
        Duration::from_millis(200),
        shutdown.clone(),
    ));
    tracker.spawn(crate::files::gc::gc_loop(files.clone(), shutdown.clone()));
    tracker.spawn(jobs::retention_loop(
        store.clone(),
        cfg.storage.retention(),
        cfg.storage.retention_interval,
        metrics.clone(),
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    info!("shutting down: draining sessions");
    // Open console pages hold event streams: end them, or the admin
    // listener's graceful shutdown would wait for every browser tab.
    site.hub.close();
    tracker.close();
    tracker.wait().await;
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
    listener.close(
        outpost_proto::messages::CloseReason::ShuttingDown
            .code()
            .into(),
        b"appliance shutting down",
    );
    // Dropping the last handles closes the writer queue; the thread commits
    // what is queued and exits.
    let writer_health = writer.health().clone();
    // The command worker finishes what it has queued (each change is
    // written before it is acknowledged, so stopping loses nothing).
    files.stop();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || files_thread.join()),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), device_link_worker).await;
    commands.stop();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || commands_thread.join()),
    )
    .await;
    patches.wake();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || patches_thread.join()),
    )
    .await;
    drop(api_state);
    drop(uplink);
    drop(ctx);
    drop(writer);
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || writer_thread.join()),
    )
    .await
    {
        Ok(Ok(Ok(()))) => {}
        Ok(_) => anyhow::bail!("the writer thread failed"),
        // A handler still holds the queue: nothing it holds was acked, so
        // exiting loses no acknowledged record.
        Err(_) => tracing::warn!("writer did not stop within 10s; exiting anyway"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), listener.wait_idle()).await;
    if let Some(why) = writer_health.failure() {
        // Exit non-zero: a supervisor restarting on failure should.
        anyhow::bail!("stopped after the writer failed: {why}");
    }
    info!("appliance stopped");
    Ok(())
}

//! Where SYNs are seen arriving: native XDP, or TC ingress (a tcx link, or a clsact filter
//! before 6.6), chosen per interface, said in the notes, and attached again when the watched
//! interface comes back.

use super::*;

/// How to attach XDP: `Auto` is driver (native) mode, except generic on veth, where native XDP
/// copies every packet the local stack sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    Auto,
    Driver,
    Generic,
}

/// Where SYNs are seen arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookChoice {
    /// Native (driver) XDP where the driver has it and it is free, else TC ingress; never
    /// generic XDP, which copies packets before any program runs.
    Auto,
    /// XDP, in the `XdpAttach` mode.
    Xdp,
    /// TC ingress: a tcx link, or a clsact filter where the kernel has no tcx.
    Tc,
}

/// The arrival hook attached, as the report and the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrivalHook {
    XdpDriver,
    XdpGeneric,
    Tcx,
    TcClsact,
}

impl ArrivalHook {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XdpDriver => "xdp_driver",
            Self::XdpGeneric => "xdp_generic",
            Self::Tcx => "tcx",
            Self::TcClsact => "tc_clsact",
        }
    }

    /// The `xdp_mode` report field: "driver", "generic", or "none" for TC.
    pub fn xdp_mode(self) -> &'static str {
        match self {
            Self::XdpDriver => "driver",
            Self::XdpGeneric => "generic",
            Self::Tcx | Self::TcClsact => "none",
        }
    }
}

/// Where and how the arrival hook is attached.
#[derive(Clone, Debug)]
pub(super) struct ArrivalTarget {
    iface: String,
    ifindex: u32,
    hook: HookChoice,
    xdp_mode: XdpAttach,
    empty: bool,
    /// The interface has gone (deleted, NIC removed) and not come back yet.
    gone: bool,
}

/// What became of the watched interface since the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceChange {
    Same,
    /// It disappeared: nothing arrives through the hook.
    Gone,
    /// An interface of that name is there again, and the hook is attached to it.
    Back,
}

impl ArrivalTarget {
    pub(super) fn new(
        iface: &str,
        hook: HookChoice,
        xdp_mode: XdpAttach,
        empty: bool,
    ) -> Result<Self> {
        Ok(ArrivalTarget {
            iface: iface.to_string(),
            ifindex: ifindex(iface)?,
            hook,
            xdp_mode,
            empty,
            gone: false,
        })
    }
}

impl Probe {
    /// Has the watched interface gone, or come back (by name, perhaps with a new index)? On
    /// its return the arrival hook is attached to it again. Cheap: one ioctl.
    pub fn check_interface(&mut self) -> Result<InterfaceChange> {
        let Some(target) = &mut self.arrival else {
            return Ok(InterfaceChange::Same);
        };
        let index = crate::sys::netlink::interface_index(&target.iface).unwrap_or(0);
        if index == 0 {
            if target.gone {
                return Ok(InterfaceChange::Same);
            }
            target.gone = true;
            return Ok(InterfaceChange::Gone);
        }
        if !target.gone && index == target.ifindex {
            return Ok(InterfaceChange::Same);
        }
        target.gone = false;
        target.ifindex = index;
        let target = target.clone();
        self.attach_arrival(&target)?;
        Ok(InterfaceChange::Back)
    }

    /// A re-attach failed: look again next time as if the interface were still gone.
    pub fn mark_interface_gone(&mut self) {
        if let Some(t) = &mut self.arrival {
            t.gone = true;
        }
    }

    /// Attaches the arrival hook `target` asks for and the departure hook beside it.
    pub(super) fn attach_arrival(&mut self, target: &ArrivalTarget) -> Result<()> {
        self.attach_arrival_only(target)?;
        let departure = hooks::TC_DEPARTURE.name(target.empty);
        if let Err(e) = self.attach_departure(departure, &target.iface) {
            self.notes.push(format!(
                "{}: the departure hook (TC egress) could not attach ({}): response and idle-close times are not measured",
                target.iface,
                one_line(&e)
            ));
        }
        Ok(())
    }

    /// TC egress, where the origin's answers leave: a tcx link, else a clsact filter (claimed
    /// like the ingress one).
    fn attach_departure(&mut self, name: &str, iface: &str) -> Result<()> {
        let tc: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if tc.fd().is_err() {
            tc.load().context("loading the TC egress program")?;
        }
        if !crate::environment::get().no_tcx
            && tc
                .attach_with_options(
                    iface,
                    TcAttachType::Egress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .is_ok()
        {
            return Ok(());
        }
        if self.clsact_claim.is_none() {
            clsact::remove_stale(iface);
        }
        let claim = clsact_filter(tc, iface, TcAttachType::Egress)
            .map_err(|e| anyhow!("cannot attach TC egress to {iface}: {e}"))?;
        self.clsact_egress_claim = Some(claim);
        Ok(())
    }

    /// Attaches the arrival hook `target` asks for and says which and why in the notes.
    fn attach_arrival_only(&mut self, target: &ArrivalTarget) -> Result<()> {
        let empty = target.empty;
        let (xdp, tc) = (
            hooks::XDP_ARRIVAL.name(empty),
            hooks::TC_ARRIVAL.name(empty),
        );
        let iface = target.iface.as_str();
        match target.hook {
            HookChoice::Xdp => {
                self.attach_xdp(xdp, iface, target.xdp_mode)?;
                if self.arrival_hook == ArrivalHook::XdpGeneric {
                    self.notes.push(format!(
                        "{iface}: generic XDP forced (--hook xdp): it copies every packet the local stack still holds before any program runs; --hook tc costs less"
                    ));
                }
                Ok(())
            }
            HookChoice::Tc => self.attach_tc(tc, iface),
            HookChoice::Auto => {
                if crate::sys::netinfo::driver_name(iface).as_deref() == Some("veth") {
                    self.attach_tc(tc, iface)?;
                    self.notes.push(format!(
                        "{iface} is a veth: TC ingress ({}); native XDP on veth copies every packet the local stack sends (--hook xdp forces XDP)",
                        self.arrival_hook.as_str()
                    ));
                    return Ok(());
                }
                match self.attach_xdp(xdp, iface, XdpAttach::Driver) {
                    Ok(()) => Ok(()),
                    Err(native) => {
                        self.attach_tc(tc, iface)?;
                        self.notes.push(format!(
                            "{iface}: no native XDP here ({}): TC ingress ({}), which composes with other programs",
                            one_line(&native),
                            self.arrival_hook.as_str()
                        ));
                        Ok(())
                    }
                }
            }
        }
    }

    /// TC ingress: a tcx link where the kernel has tcx (it is a link: detached with the
    /// process, even on SIGKILL), else a clsact filter (`TRACER_NO_TCX=1` forces it, to test
    /// the older kernels' path here).
    fn attach_tc(&mut self, name: &str, iface: &str) -> Result<()> {
        let tc: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if tc.fd().is_err() {
            tc.load().context("loading the TC program")?;
        }
        let tcx_error = if crate::environment::get().no_tcx {
            "not tried (TRACER_NO_TCX)".to_string()
        } else {
            match tc.attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(_) => {
                    self.arrival_hook = ArrivalHook::Tcx;
                    return Ok(());
                }
                Err(e) => e.to_string(),
            }
        };
        // Before tcx (6.6): a clsact qdisc (shared; EEXIST when present) and a filter. A
        // filter outlives a SIGKILLed tracer: it is claimed in the state directory, so a later
        // start removes the tracer's own leftovers and no one else's (`clsact`).
        clsact::remove_stale(iface);
        let claim = clsact_filter(tc, iface, TcAttachType::Ingress).map_err(|e| {
            anyhow!("cannot attach TC ingress to {iface}: tcx: {tcx_error}; clsact: {e}")
        })?;
        self.clsact_claim = Some(claim);
        self.arrival_hook = ArrivalHook::TcClsact;
        Ok(())
    }

    fn attach_xdp(&mut self, xdp_program: &str, iface: &str, mode: XdpAttach) -> Result<()> {
        let xdp: &mut Xdp = program(&mut self.ebpf, xdp_program)?;
        if xdp.fd().is_err() {
            xdp.load().context("loading the XDP program")?;
        }
        let veth = crate::sys::netinfo::driver_name(iface).as_deref() == Some("veth");
        let generic_first = match mode {
            XdpAttach::Generic => true,
            XdpAttach::Driver => false,
            XdpAttach::Auto => veth,
        };
        if generic_first {
            xdp.attach(iface, XdpMode::Skb)
                .map_err(|e| xdp_attach_error(iface, "generic", e))?;
            self.arrival_hook = ArrivalHook::XdpGeneric;
            if mode == XdpAttach::Auto {
                self.notes.push(format!(
                    "{iface} is a veth: generic XDP (native XDP on veth copies every packet the local stack sends; --xdp-mode driver forces it)"
                ));
            }
            return Ok(());
        }
        match xdp.attach(iface, XdpMode::Driver) {
            Ok(_) => {
                self.arrival_hook = ArrivalHook::XdpDriver;
            }
            Err(native) if mode == XdpAttach::Auto => {
                xdp.attach(iface, XdpMode::Skb).map_err(|generic| {
                    anyhow!(
                        "cannot attach XDP to {iface}: driver mode: {native}; generic mode: {generic} (is another XDP program attached?)"
                    )
                })?;
                self.arrival_hook = ArrivalHook::XdpGeneric;
                self.notes.push(format!(
                    "{iface}: driver doesn't support native XDP ({native}); using generic (skb) mode"
                ));
            }
            Err(native) => return Err(xdp_attach_error(iface, "driver", native)),
        }
        Ok(())
    }
}

/// A clsact filter for `tc` on `iface` (the qdisc added where missing), with a random handle
/// claimed in the state directory.
fn clsact_filter(
    tc: &mut SchedClassifier,
    iface: &str,
    attach: TcAttachType,
) -> std::result::Result<clsact::Claimed, ProgramError> {
    let _ = tc::qdisc_add_clsact(iface);
    let handle = clsact::new_handle();
    tc.attach_with_options(
        iface,
        attach,
        TcAttachOptions::Netlink(NlOptions {
            handle: TcHandle::new((handle >> 16) as u16, handle as u16),
            ..NlOptions::default()
        }),
    )?;
    let direction = if attach == TcAttachType::Ingress {
        "ingress"
    } else {
        "egress"
    };
    Ok(clsact::claim(iface, direction, handle))
}

/// Why XDP could not attach, on one line: the errno, the program holding the slot when the
/// kernel names one, and what works beside it.
fn xdp_attach_error(iface: &str, mode: &str, e: ProgramError) -> anyhow::Error {
    let cause = one_line(&anyhow::Error::from(e));
    match crate::sys::netinfo::xdp_holder(iface) {
        Some(holder) => anyhow!(
            "cannot attach XDP to {iface} in {mode} mode: XDP program {holder} holds it ({cause}); --hook tc (or auto) attaches beside it, or detach that program"
        ),
        None => anyhow!(
            "cannot attach XDP to {iface} in {mode} mode: {cause}; --hook tc (or auto) uses TC ingress instead"
        ),
    }
}

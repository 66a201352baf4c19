//! Kernel programs of the 521 tracer. They observe and count; every decision about what an
//! event means is made in userspace.
#![no_std]
#![no_main]

mod arrival;
mod common;
mod dial;
mod drop;
mod empty;
mod exchange;
mod sock;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

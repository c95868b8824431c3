fn main() {
    std::process::exit(syncd_vrrp::cli_main(std::env::args_os().skip(1).collect()))
}

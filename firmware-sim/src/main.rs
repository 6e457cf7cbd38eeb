fn main() {
    eprintln!("firmware-sim: not yet implemented; see the simulator issue");
    std::process::exit(2);
}

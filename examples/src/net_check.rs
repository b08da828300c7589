//! Placeholder (being written).
fn main() {
    std::process::exit(2);
}

//! The `reward-lens` binary: the command line of [`reward_lens_cli`].

fn main() {
    reward_lens_cli::main()
}

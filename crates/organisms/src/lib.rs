//! Model organisms: tiny reward models whose preference rules we planted, with answer keys, so
//! every instrument can be checked against a known answer.

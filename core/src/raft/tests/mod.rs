mod harness;
mod scenarios;

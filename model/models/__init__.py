"""The networks of HyperHuman (§3.2, §3.3) and the frozen pretrained parts they run beside."""

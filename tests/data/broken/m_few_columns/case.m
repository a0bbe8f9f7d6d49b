function mpc = c
mpc.baseMVA = 100;
mpc.bus = [
1 3 0 0 0;
];
mpc.gen = [
1 0 0 9 -9 1 100 1 9 0;
];
mpc.branch = [
1 1 0.01 0.1 0 0 0 0 0 0 1;
];

function mpc = case3_v2
%CASE3_V2  three buses, MATPOWER case format version 2; the same grid as case3_v1.m.
mpc.version = '2';
mpc.baseMVA = 100;
%% bus data
mpc.bus = [
	1	3	0	0	0	0	1	1.02	0	110	1	1.1	0.9;  % the slack
	2	1	40	10	0	0	1	1	0	110	1	1.1	0.9;
	30	2	20	5	0	0	1	1.01	0	110	1	1.1	0.9;
];
mpc.gen = [
	1, 0, 0, 100, -100, 1.02, 100, 1, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0;
	30, 30, 0, 50, -50, 1.01, 100, 1, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0;
];
mpc.branch = [
	1	2	0.01	0.05	0.02	100	100	100	0	0	1	-360	360;
	2	30	0.01	0.05	0.02	100	100	100	0	0 ...
		1	-360	360;
	1	31	0.02	0.08	0.03	100	100	100	0	0	1	-360	360;
];
mpc.bus_name = {
	'Slack %1';
	'Load';
	'PV';
};
mpc.gencost = [
	2	0	0	3	0.01	40	0;
	2	0	0	3	0.01	40	0;
];
